//! Errors at the boundary: negative errnos, the thread's last error message,
//! and the guard that keeps panics on the Rust side.
//!
//! The message lives in a fixed thread-local buffer: recording an error never
//! allocates, so `vdpa_iova_translate` stays allocation-free on its error
//! paths too.

use core::cell::RefCell;
use core::ffi::{c_char, c_int};
use core::fmt::{self, Write};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ::vdpa_iova_planner::{PlanError, Violation};

/// Bytes of the message buffer, terminating NUL included. The longest
/// planner message (an out-of-IOVA error listing eight free ranges) is
/// about 500 bytes; longer ones are cut.
const MSG_CAP: usize = 1024;

struct MsgBuf {
    buf: [u8; MSG_CAP],
    len: usize,
}

impl MsgBuf {
    const fn new() -> Self {
        MsgBuf {
            buf: [0; MSG_CAP],
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.buf[0] = 0;
    }
}

impl Write for MsgBuf {
    /// Appends what fits, keeping room for the NUL; an interior NUL (none of
    /// our messages has one) becomes `?` so C sees the whole message.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 1 >= MSG_CAP {
                break;
            }
            self.buf[self.len] = if b == 0 { b'?' } else { b };
            self.len += 1;
        }
        self.buf[self.len] = 0;
        Ok(())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<MsgBuf> = const { RefCell::new(MsgBuf::new()) };
}

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum Why {
    /// The planner refused the event.
    Plan(PlanError),
    /// The kernel model refused the message.
    Model(Violation),
    /// A required pointer argument is NULL.
    Null(&'static str),
    /// A pointer argument is not aligned for its type.
    Misaligned(&'static str),
    /// An argument out of its domain: `name` is `value`, and must be `must`.
    Arg {
        name: &'static str,
        value: u64,
        must: &'static str,
    },
    /// A refusal explained by a fixed sentence.
    Msg(&'static str),
    /// A caller's array too small.
    NoBufs {
        what: &'static str,
        needed: usize,
        cap: usize,
    },
    /// A handle left unusable by an earlier internal error.
    Poisoned,
    /// A panic caught at the boundary.
    Panic(Box<dyn Any + Send>),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Plan(e) => write!(f, "{e}"),
            Why::Model(v) => write!(f, "the kernel would refuse this message: {v}"),
            Why::Msg(m) => f.write_str(m),
            Why::Null(name) => write!(f, "{name} is NULL"),
            Why::Misaligned(name) => write!(f, "{name} is not aligned for its type"),
            Why::Arg { name, value, must } => write!(f, "{name} is {value:#x}: {must}"),
            Why::NoBufs { what, needed, cap } => {
                write!(f, "{what} needs {needed} elements, the array holds {cap}")
            }
            Why::Poisoned => write!(
                f,
                "this planner hit an internal error earlier and can no longer be trusted: free it"
            ),
            Why::Panic(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("unknown cause");
                write!(f, "internal error (please report it): {what}")
            }
        }
    }
}

/// A failure: the errno (positive) and why.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) errno: c_int,
    pub(crate) why: Why,
}

impl Error {
    pub(crate) fn null(name: &'static str) -> Self {
        Error {
            errno: libc::EFAULT,
            why: Why::Null(name),
        }
    }

    pub(crate) fn misaligned(name: &'static str) -> Self {
        Error {
            errno: libc::EFAULT,
            why: Why::Misaligned(name),
        }
    }

    pub(crate) fn arg(name: &'static str, value: u64, must: &'static str) -> Self {
        Error {
            errno: libc::EINVAL,
            why: Why::Arg { name, value, must },
        }
    }

    pub(crate) fn no_bufs(what: &'static str, needed: usize, cap: usize) -> Self {
        Error {
            errno: libc::ENOBUFS,
            why: Why::NoBufs { what, needed, cap },
        }
    }

    pub(crate) fn unsupported(what: &'static str) -> Self {
        Error {
            errno: libc::EOPNOTSUPP,
            why: Why::Msg(what),
        }
    }

    pub(crate) fn poisoned() -> Self {
        Error {
            errno: libc::EIO,
            why: Why::Poisoned,
        }
    }
}

/// The errno of each planner refusal.
pub(crate) fn plan_errno(e: &PlanError) -> c_int {
    match e {
        PlanError::OutOfIova { .. } => libc::ENOSPC,
        PlanError::UnknownRegion { .. }
        | PlanError::NotGuestMemory { .. }
        | PlanError::NotMapped { .. } => libc::ENOENT,
        PlanError::Unreachable { .. } => libc::ERANGE,
        PlanError::OutOfOrder { .. } | PlanError::MissingSvqConfig => libc::EPROTO,
        PlanError::StaleTranslator => libc::ESTALE,
        PlanError::NoViommu { .. } | PlanError::Unsupported { .. } => libc::EOPNOTSUPP,
        PlanError::RegionInUse { .. } => libc::EBUSY,
        // Bad page size or range, zero, wrapping or unaligned sizes,
        // overlapping regions or guest maps, bad SVQ parameters or guest
        // maps, and whatever a later version of the core adds: PlanError is
        // #[non_exhaustive], so this crate cannot list its variants and
        // the compiler cannot point here when one is added.
        _ => libc::EINVAL,
    }
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        Error {
            errno: plan_errno(&e),
            why: Why::Plan(e),
        }
    }
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        // The errno the kernel's handler returns (a real device reports
        // EFAULT for all of them); EPROTO for a message the kernel accepts
        // but whose effect differs from what it says.
        Error {
            errno: v.kernel_errno().unwrap_or(libc::EPROTO),
            why: Why::Model(v),
        }
    }
}

/// Records `func: why` as this thread's last error.
fn record(func: &str, why: &Why) {
    // A thread being torn down has no buffer left: the errno still tells.
    let _ = LAST_ERROR.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            b.clear();
            let _ = write!(b, "{func}: {why}");
        }
    });
}

/// Runs the body of an entry point: its `Ok` value is returned as is, an
/// error becomes its negative errno with the message recorded, and a panic
/// becomes `-EIO`.
pub(crate) fn guard(func: &'static str, body: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            record(func, &e.why);
            -e.errno
        }
        Err(payload) => {
            // Dropping a panic payload can itself panic: keep it.
            let why = Why::Panic(payload);
            record(func, &why);
            std::mem::forget(why);
            -libc::EIO
        }
    }
}

/// The failure path of an entry point that does without [`guard`]'s
/// `Result` (the SVQ data path): records `func: why` and returns the
/// negative errno. Out of line, so the caller's success path stays small.
#[cold]
#[inline(never)]
pub(crate) fn fail(func: &'static str, e: Error) -> c_int {
    record(func, &e.why);
    -e.errno
}

/// As [`fail`], for a panic caught by an entry point that does without
/// [`guard`]: `-EIO`.
#[cold]
#[inline(never)]
pub(crate) fn panicked(func: &'static str, payload: Box<dyn Any + Send>) -> c_int {
    let why = Why::Panic(payload);
    record(func, &why);
    std::mem::forget(why);
    -libc::EIO
}

/// As [`guard`], for an entry point returning a pointer: NULL on failure.
pub(crate) fn guard_ptr<T>(
    func: &'static str,
    body: impl FnOnce() -> Result<*const T, Error>,
) -> *const T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            record(func, &e.why);
            core::ptr::null()
        }
        Err(payload) => {
            let why = Why::Panic(payload);
            record(func, &why);
            std::mem::forget(why);
            core::ptr::null()
        }
    }
}

/// Runs a destructor, keeping a panic (none is expected) from unwinding into C.
pub(crate) fn guard_free(func: &'static str, body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        let why = Why::Panic(payload);
        record(func, &why);
        std::mem::forget(why);
    }
}

/// The message of the last call that failed on this thread: one line
/// naming the function, suitable for QEMU's `error_setg(errp, "%s", ...)`.
///
/// Never NULL: an empty string when no call failed yet. The text is only
/// meaningful right after a call returned a negative errno, and the pointer
/// is valid until the next call into this library from the same thread.
#[no_mangle]
pub extern "C" fn vdpa_iova_last_error() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    LAST_ERROR
        .try_with(|b| match b.try_borrow() {
            Ok(b) => b.buf.as_ptr().cast::<c_char>(),
            Err(_) => EMPTY.as_ptr().cast(),
        })
        .unwrap_or(EMPTY.as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: vdpa_iova_last_error returns a NUL-terminated string that
        // stays valid until the next call into the library on this thread.
        unsafe { CStr::from_ptr(vdpa_iova_last_error()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_panic_becomes_eio_with_its_message() {
        let r = guard("vdpa_iova_test", || panic!("boom {}", 7));
        assert_eq!(r, -libc::EIO);
        assert_eq!(
            last(),
            "vdpa_iova_test: internal error (please report it): boom 7"
        );
        let r = guard("vdpa_iova_test", || std::panic::panic_any(42_u32));
        assert_eq!(r, -libc::EIO);
        assert!(last().ends_with("unknown cause"), "{}", last());
    }

    #[test]
    fn a_long_message_is_cut_and_terminated() {
        let long: &'static str = Box::leak("x".repeat(5000).into_boxed_str());
        let r = guard("f", || Err(Error::arg(long, 1, "short")));
        assert_eq!(r, -libc::EINVAL);
        let m = last();
        assert_eq!(m.len(), MSG_CAP - 1);
        assert!(m.starts_with("f: xxx"));
    }

    #[test]
    fn success_returns_the_value_and_keeps_the_last_message() {
        let _ = guard("f", || Err(Error::null("out")));
        assert_eq!(guard("g", || Ok(5)), 5);
        assert_eq!(last(), "f: out is NULL");
    }
}
