//! The [`Registry`]: copyreg's role. Which globals a pickle may name, how their objects are
//! rebuilt on load, how Rust values are reduced on dump, and the extension-code table.
//!
//! Nothing is ever imported or called by name: a global is either one of the fixed patterns
//! CPython writes for basic types (handled natively by the decoder, see docs/pickle.md), or an
//! entry of this registry, or refused (or, with `LoadOptions::inert`, kept as an inert object).

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cellar_value::Value;

use crate::error::RegistryError;
use crate::inert::Inert;

/// Rebuilds a value from an object the pickle describes (its args, state and items). The
/// error string becomes the message of the `UnpicklingError`.
pub type Constructor = Arc<dyn Fn(&Inert) -> Result<Value, String> + Send + Sync>;

/// Offered every value `dumps` writes (copyreg's `dispatch_table` role): returns the object to
/// write instead (global + args + state), or `None` to write the value normally.
pub type Reducer = Arc<dyn Fn(&Value) -> Option<Inert> + Send + Sync>;

/// How an allowed global is rebuilt.
#[derive(Clone)]
pub(crate) enum Allowed {
    /// Kept as an inert object (decoded as [`Inert`]'s value encoding).
    Inert,
    /// Rebuilt by a constructor.
    Construct(Constructor),
}

/// copyreg's role for cellar's codec. `Registry::default()` allows exactly the globals CPython
/// writes for basic types (complex, set, frozenset, bytearray, bytes, slice, Ellipsis,
/// StopIteration, and the `_codecs.encode` form of bytes), which the decoder handles natively.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) allowed: HashMap<(String, String), Allowed>,
    pub(crate) reducers: Vec<Reducer>,
    ext_by_key: HashMap<(String, String), i32>,
    ext_by_code: HashMap<i32, (String, String)>,
    pub(crate) types: HashMap<TypeId, (String, String)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut allowed: Vec<String> = self
            .allowed
            .keys()
            .map(|(m, n)| format!("{m}.{n}"))
            .collect();
        allowed.sort();
        f.debug_struct("Registry")
            .field("allowed", &allowed)
            .field("reducers", &self.reducers.len())
            .field("extensions", &self.ext_by_code.len())
            .finish()
    }
}

impl Registry {
    /// The default registry: basic types only.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Allows the global `module.name`: its objects decode to inert objects (see [`Inert`])
    /// even without `LoadOptions::inert`.
    pub fn allow(&mut self, module: &str, name: &str) -> &mut Self {
        self.allowed
            .insert((module.to_owned(), name.to_owned()), Allowed::Inert);
        self
    }

    /// Allows `module.name` and rebuilds each object it constructs with `f`, which receives
    /// the object's args, kwargs, BUILD state and items (copyreg's `constructor`, plus what
    /// `__setstate__` does). `f` also receives a bare reference to the global
    /// ([`crate::Construct::Global`]) when the class itself is pickled as a value.
    pub fn constructor<F>(&mut self, module: &str, name: &str, f: F) -> &mut Self
    where
        F: Fn(&Inert) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.allowed.insert(
            (module.to_owned(), name.to_owned()),
            Allowed::Construct(Arc::new(f)),
        );
        self
    }

    /// Adds a reducer (copyreg.pickle's role): `dumps` offers it every value before writing it.
    pub fn reducer<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(&Value) -> Option<Inert> + Send + Sync + 'static,
    {
        self.reducers.push(Arc::new(f));
        self
    }

    /// Maps the Rust type `T` to the Python class `module.name` for the serde bridge
    /// ([`crate::to_vec_with`] / [`crate::from_slice_with`]): a `T` is written as an instance of
    /// that class whose `__dict__` is `T`'s fields, and an instance of that class loads back
    /// into a `T` from its `__dict__` (the class is allowed).
    pub fn register_type<T: 'static>(&mut self, module: &str, name: &str) -> &mut Self {
        self.types
            .insert(TypeId::of::<T>(), (module.to_owned(), name.to_owned()));
        self.constructor(module, name, crate::serde_api::state_of);
        self
    }

    /// Whether `module.name` is allowed by this registry (beyond the basic types).
    pub fn is_allowed(&self, module: &str, name: &str) -> bool {
        self.allowed
            .contains_key(&(module.to_owned(), name.to_owned()))
    }

    pub(crate) fn lookup(&self, module: &str, name: &str) -> Option<&Allowed> {
        // Avoids allocating when the registry is empty (the common, safe default).
        if self.allowed.is_empty() {
            return None;
        }
        self.allowed.get(&(module.to_owned(), name.to_owned()))
    }

    /// copyreg.add_extension: registers `code` (1..=0x7fffffff) for `module.name`. Registering
    /// the same pair again is fine; a conflicting key or code is an error.
    pub fn add_extension(
        &mut self,
        module: &str,
        name: &str,
        code: i64,
    ) -> Result<(), RegistryError> {
        if !(1..=0x7fff_ffff).contains(&code) {
            return Err(RegistryError {
                message: "code out of range".into(),
            });
        }
        let code = code as i32;
        let key = (module.to_owned(), name.to_owned());
        if self.ext_by_key.get(&key) == Some(&code) && self.ext_by_code.get(&code) == Some(&key) {
            return Ok(());
        }
        if let Some(c) = self.ext_by_key.get(&key) {
            return Err(RegistryError {
                message: format!("key ('{module}', '{name}') is already registered with code {c}"),
            });
        }
        if let Some((m, n)) = self.ext_by_code.get(&code) {
            return Err(RegistryError {
                message: format!("code {code} is already in use for key ('{m}', '{n}')"),
            });
        }
        self.ext_by_key.insert(key.clone(), code);
        self.ext_by_code.insert(code, key);
        Ok(())
    }

    /// copyreg.remove_extension: unregisters `module.name` with `code`; an error unless that
    /// exact pair is registered.
    pub fn remove_extension(
        &mut self,
        module: &str,
        name: &str,
        code: i64,
    ) -> Result<(), RegistryError> {
        let key = (module.to_owned(), name.to_owned());
        let ok = i32::try_from(code).ok().is_some_and(|c| {
            self.ext_by_key.get(&key) == Some(&c) && self.ext_by_code.get(&c) == Some(&key)
        });
        if !ok {
            return Err(RegistryError {
                message: format!("key ('{module}', '{name}') is not registered with code {code}"),
            });
        }
        self.ext_by_key.remove(&key);
        self.ext_by_code.remove(&(code as i32));
        Ok(())
    }

    /// Removes every extension code (copyreg's `_extension_registry` and
    /// `_inverted_registry` cleared).
    pub fn clear_extensions(&mut self) {
        self.ext_by_key.clear();
        self.ext_by_code.clear();
    }

    /// The extension code registered for `module.name`.
    pub fn extension_code(&self, module: &str, name: &str) -> Option<i32> {
        if self.ext_by_key.is_empty() {
            return None;
        }
        self.ext_by_key
            .get(&(module.to_owned(), name.to_owned()))
            .copied()
    }

    /// The global registered for an extension code.
    pub fn extension(&self, code: i32) -> Option<(&str, &str)> {
        self.ext_by_code
            .get(&code)
            .map(|(m, n)| (m.as_str(), n.as_str()))
    }
}
