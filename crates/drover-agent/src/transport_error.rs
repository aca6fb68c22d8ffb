//! What a transport (gRPC, TLS) error means, in words an operator can act on. Its own module because both
//! enrollment (`identity`) and the link describe the same failures, and neither should import the other.

/// All sources of an error, joined: transport errors hide their cause several levels down.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// What a TLS handshake with drover's REST API port (plain HTTP) means, said where it is seen.
pub const REST_PORT_HINT: &str = "this address answers plain HTTP, not TLS: it is probably drover's REST API port \
     (`drover server --listen`, 8080 by default); agents connect to the agent port, 9090 by default \
     (`--agent-listen`), like https://SERVER:9090";

/// Whether a handshake failed because the peer answered in plain HTTP: rustls reads the first bytes of
/// "HTTP/1.1 400" as a record of an impossible type.
pub fn answered_without_tls(chain: &str) -> bool {
    chain.contains("corrupt message") || chain.contains("InvalidContentType")
}

/// Turns a transport error into advice an operator can act on.
pub fn describe_transport_error(e: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(e);
    if answered_without_tls(&chain) {
        format!("{chain}: {REST_PORT_HINT}")
    } else if chain.contains("Connection refused") {
        format!("{chain} (is the server running and listening on this address?)")
    } else if chain.contains("alert")
        && (chain.contains("UnknownCA")
            || chain.contains("BadCertificate")
            || chain.contains("CertificateRequired")
            || chain.contains("DecryptError"))
    {
        format!(
            "the server refused this node's certificate ({chain}): it was not issued by this server's CA. \
             If the server was reinstalled, remove the agent's state dir and enroll again with a new join token"
        )
    } else if chain.contains("invalid peer certificate") {
        format!(
            "the server's certificate is not signed by the CA this node pinned at enrollment ({chain}): \
             wrong server address, or the server was reinstalled"
        )
    } else {
        chain
    }
}
