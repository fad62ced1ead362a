//! Names the flag behind a listen address that is already in use.
//!
//! The server libraries report a failed bind as an I/O error; which of a command's listeners
//! failed, and which flag set it, is only known here, at the binary's edge.

use std::net::SocketAddr;

/// One address a command listens on and how the operator sets it
/// (`"--listen / QMQ_BROKER_LISTEN"`).
pub type Listener = (SocketAddr, &'static str);

/// `result`, with an "address already in use" failure explained: the address and the flag that
/// set it lead the error (`127.0.0.1:20881 is already in use (set by --listen /
/// QMQ_BROKER_LISTEN)`), the original error following as its cause.
pub fn explained<T>(result: anyhow::Result<T>, listeners: &[Listener]) -> anyhow::Result<T> {
    result.map_err(|e| explain(e, listeners))
}

/// See [`explained`].
fn explain(error: anyhow::Error, listeners: &[Listener]) -> anyhow::Error {
    if !in_use(&error) {
        return error;
    }
    // The failed listener is gone with the failed start; the address still taken is the one.
    let taken: Vec<&Listener> = listeners
        .iter()
        .filter(|(addr, _)| addr.port() != 0)
        .filter(|(addr, _)| {
            std::net::TcpListener::bind(addr)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
        })
        .collect();
    match taken.as_slice() {
        [] => error,
        [(addr, flag), ..] => error.context(format!("{addr} is already in use (set by {flag})")),
    }
}

/// Whether an "address already in use" I/O error is somewhere in `error`'s chain.
fn in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_use_is_named_with_its_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = std::net::TcpListener::bind(addr).unwrap_err();
        let error = anyhow::Error::new(bind).context("starting the broker");
        let listeners = [(free, "--other"), (addr, "--listen / QMQ_BROKER_LISTEN")];
        let text = format!("{:#}", explain(error, &listeners));
        assert!(
            text.starts_with(&format!(
                "{addr} is already in use (set by --listen / QMQ_BROKER_LISTEN)"
            )),
            "{text}"
        );
        // Other errors pass through untouched.
        let other = anyhow::anyhow!("disk full");
        assert_eq!(format!("{:#}", explain(other, &listeners)), "disk full");
    }
}
