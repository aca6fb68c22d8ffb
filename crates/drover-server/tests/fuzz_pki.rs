//! Property tests ("fuzzing" on stable Rust): certificate signing requests as an enrolling stranger sends them
//! (garbage, PEM around garbage, a real CSR with bytes flipped or cut) and client certificates as a peer
//! presents them. Never a panic; a bad CSR is `PkiError::BadCsr`.
//!
//! Cases per property: PROPTEST_CASES when set (scripts/fuzz.sh sets it high), else a CI-sized default.

use std::sync::OnceLock;

use drover_server::pki::{Pki, PkiError, node_id_from_cert, pem_to_der};
use proptest::prelude::*;

fn config(ci_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci_cases;
    }
    config
}

/// One CA for the whole run: creating it costs a key generation.
fn pki() -> &'static Pki {
    static PKI: OnceLock<(tempfile::TempDir, Pki)> = OnceLock::new();
    &PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        (dir, pki)
    })
    .1
}

/// A CSR as a real agent makes it, in DER.
fn real_csr_der() -> &'static [u8] {
    static CSR: OnceLock<Vec<u8>> = OnceLock::new();
    CSR.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec!["node".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        csr.der().to_vec()
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = drover_types::base64::encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A real CSR with some bytes replaced and maybe cut short.
fn mutated_csr() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(flips, cut)| {
            let mut der = real_csr_der().to_vec();
            for (at, byte) in flips {
                let i = at.index(der.len());
                der[i] = byte;
            }
            if let Some(cut) = cut {
                der.truncate(cut.index(der.len()));
            }
            der
        })
}

fn csr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| pem("CERTIFICATE REQUEST", &b)),
        mutated_csr().prop_map(|b| pem("CERTIFICATE REQUEST", &b)),
        mutated_csr().prop_map(|b| pem("CERTIFICATE", &b)),
        "-----BEGIN CERTIFICATE REQUEST-----\n[A-Za-z0-9+/=\n]{0,200}\n-----END CERTIFICATE REQUEST-----\n",
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn csrs_are_signed_or_refused_never_panic(csr in csr_text()) {
        match pki().sign_node_csr(&csr, "n-0123456789abcdef") {
            Ok(cert) => {
                // Whatever the request said, the certificate names the node the server chose.
                let der = pem_to_der(&cert).unwrap();
                let id = node_id_from_cert(&der);
                prop_assert_eq!(id.as_deref(), Some("n-0123456789abcdef"));
            }
            Err(PkiError::BadCsr(_) | PkiError::Generate(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
        }
    }

    #[test]
    fn peer_certificates_never_panic(der in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated_csr(),
    ], text in any::<String>()) {
        let _ = node_id_from_cert(&der);
        let _ = pem_to_der(&text);
        let _ = pem_to_der(&pem("CERTIFICATE", &der));
    }
}
