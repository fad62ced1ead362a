//! Fault injection: named failpoints at the store's write, fsync, read, rename and delete
//! sites, compiled in only with the `failpoints` feature (the `fail` crate; without the
//! feature every check is a no-op the compiler removes).
//!
//! A site is named `<file kind>.<operation>`: the file kinds are `message-log`, `action-log`,
//! `consume-log`, `pull-log` and `checkpoint`; the operations `write`, `fsync`, `read`,
//! `rename` and `delete`. Configured with `return` a site fails with EIO (`return(enospc)`:
//! ENOSPC) instead of doing its I/O; `pause`, `panic` and callbacks work as `fail` documents.
//! tests/failpoints.rs drives them.

/// Fails with the injected I/O error if the failpoint `<kind>.<op>` is set to `return`.
/// `kind` may be a log's display name: spaces become dashes ("message log" → `message-log`).
#[inline]
pub(crate) fn check(kind: &str, op: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    {
        let name = format!("{}.{op}", kind.replace(' ', "-"));
        let injected = fail::eval(&name, |arg| {
            let errno = match arg.as_deref() {
                Some("enospc") => rustix::io::Errno::NOSPC,
                _ => rustix::io::Errno::IO,
            };
            std::io::Error::from(errno)
        });
        if let Some(e) = injected {
            return Err(e);
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (kind, op);
    Ok(())
}
