//! The open flag: CPython's `'r'`, `'w'`, `'c'`, `'n'` plus gnu's modifiers, typed.

use std::fmt;

use crate::error::{DbmError, Result};

/// What `open` does about an existing or missing database (the first letter of CPython's flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `'r'`: open an existing database read-only.
    Read,
    /// `'w'`: open an existing database read-write.
    Write,
    /// `'c'`: open read-write, creating the database if missing.
    Create,
    /// `'n'`: always create a new, empty database.
    New,
}

impl Access {
    /// The CPython letter.
    pub fn letter(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Create => 'c',
            Access::New => 'n',
        }
    }
}

/// An open flag: an [`Access`] and gnu's modifiers (`'f'` fast, `'s'` sync, `'u'` unlocked).
///
/// ```
/// use cellar_dbm::Flag;
/// assert_eq!(Flag::parse("cf").unwrap(), Flag::Create.fast());
/// assert_eq!(Flag::Create.sync().to_string(), "cs");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flag {
    access: Access,
    fast: bool,
    sync: bool,
    unlocked: bool,
}

#[allow(non_upper_case_globals)]
impl Flag {
    /// `'r'`
    pub const Read: Flag = Flag::new(Access::Read);
    /// `'w'`
    pub const Write: Flag = Flag::new(Access::Write);
    /// `'c'`
    pub const Create: Flag = Flag::new(Access::Create);
    /// `'n'`
    pub const New: Flag = Flag::new(Access::New);

    /// A flag without modifiers.
    pub const fn new(access: Access) -> Flag {
        Flag {
            access,
            fast: false,
            sync: false,
            unlocked: false,
        }
    }

    /// Adds gnu's `'f'` (fast: no sync per write; the native engine's default anyway).
    pub const fn fast(mut self) -> Flag {
        self.fast = true;
        self
    }

    /// Adds gnu's `'s'` (sync every write to disk before it returns).
    pub const fn sync(mut self) -> Flag {
        self.sync = true;
        self
    }

    /// Adds gnu's `'u'` (do not lock the database).
    pub const fn unlocked(mut self) -> Flag {
        self.unlocked = true;
        self
    }

    /// The access part.
    pub fn access(self) -> Access {
        self.access
    }

    /// Whether `'f'` was given.
    pub fn is_fast(self) -> bool {
        self.fast
    }

    /// Whether `'s'` was given.
    pub fn is_sync(self) -> bool {
        self.sync
    }

    /// Whether `'u'` was given.
    pub fn is_unlocked(self) -> bool {
        self.unlocked
    }

    /// True when any modifier is set.
    pub fn has_modifiers(self) -> bool {
        self.fast || self.sync || self.unlocked
    }

    /// Whether the database is opened for writing.
    pub fn is_writable(self) -> bool {
        self.access != Access::Read
    }

    /// Parses a CPython flag string: one of `r w c n`, then any of `f s u` (as dbm.gnu checks
    /// it; each backend then rejects what its CPython counterpart rejects).
    pub fn parse(s: &str) -> Result<Flag> {
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('c') => Access::Create,
            Some('n') => Access::New,
            _ => {
                return Err(DbmError::BadFlag {
                    flag: s.to_string(),
                    message: "First flag must be one of 'r', 'w', 'c' or 'n'".to_string(),
                })
            }
        };
        let mut flag = Flag::new(access);
        for c in chars {
            match c {
                'f' => flag.fast = true,
                's' => flag.sync = true,
                'u' => flag.unlocked = true,
                c => {
                    return Err(DbmError::BadFlag {
                        flag: s.to_string(),
                        message: format!("Flag '{c}' is not supported."),
                    })
                }
            }
        }
        Ok(flag)
    }
}

impl std::str::FromStr for Flag {
    type Err = DbmError;
    fn from_str(s: &str) -> Result<Flag> {
        Flag::parse(s)
    }
}

/// The CPython flag string (`"cf"`); modifiers in the order f, s, u.
impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(4);
        s.push(self.access.letter());
        if self.fast {
            s.push('f');
        }
        if self.sync {
            s.push('s');
        }
        if self.unlocked {
            s.push('u');
        }
        f.write_str(&s)
    }
}
