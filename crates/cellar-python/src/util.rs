//! Small shared pieces: the CPython function pyo3-ffi does not declare (`PySys_Audit`) and the
//! current thread's stack bounds.

use std::os::raw::c_int;

extern "C" {
    /// Raise an auditing event (public C API since 3.8; variadic, so not declared by pyo3-ffi).
    pub(crate) fn PySys_Audit(
        event: *const std::os::raw::c_char,
        format: *const std::os::raw::c_char,
        ...
    ) -> c_int;
}

/// Stop recursing when fewer than this many bytes of stack remain (or a quarter of the stack,
/// if that is less).
const STACK_MARGIN: usize = 256 * 1024;

std::thread_local! {
    /// Lowest address this thread's recursion may reach (0 = unknown: no guard).
    static STACK_FLOOR: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The lowest stack address the encoder and decoder may recurse down to on this thread, leaving
/// a safety margin: nesting is limited to 2000 levels, but a thread with a small stack (e.g.
/// `threading.stack_size(512 * 1024)`) could still overflow; past this floor they raise the
/// nesting error instead of crashing. 0 when the bounds are unknown.
pub(crate) fn stack_floor() -> usize {
    STACK_FLOOR.with(|c| match c.get() {
        Some(f) => f,
        None => {
            let f = thread_stack_low().map_or(0, |(low, size)| {
                low.saturating_add(STACK_MARGIN.min(size / 4))
            });
            c.set(Some(f));
            f
        }
    })
}

/// The current stack position (an address in the current frame).
#[inline(always)]
pub(crate) fn stack_here() -> usize {
    let marker = 0u8;
    std::ptr::addr_of!(marker) as usize
}

#[cfg(all(unix, not(target_os = "macos")))]
fn thread_stack_low() -> Option<(usize, usize)> {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread; it is destroyed after use.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if r != 0 || addr.is_null() || size == 0 {
            return None;
        }
        Some((addr as usize, size))
    }
}

#[cfg(target_os = "macos")]
fn thread_stack_low() -> Option<(usize, usize)> {
    // SAFETY: plain queries about the calling thread.
    unsafe {
        let t = libc::pthread_self();
        let top = libc::pthread_get_stackaddr_np(t) as usize;
        let size = libc::pthread_get_stacksize_np(t);
        top.checked_sub(size).map(|low| (low, size))
    }
}

#[cfg(not(unix))]
fn thread_stack_low() -> Option<(usize, usize)> {
    None
}
