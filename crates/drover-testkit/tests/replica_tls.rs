//! TLS and credentials for the replicas' PostgreSQL and NATS (issue 23), against a real PostgreSQL that
//! takes TCP connections over TLS only and a real nats-server that requires TLS and credentials (JWT
//! creds in operator mode, or an nkey seed). With the right flags a replica starts and serves; without
//! them it exits naming the flag to set.

use drover_testkit::{
    Nats, NatsOperator, Postgres, Server, ServerOptions, TestCerts, nkey_user, tail,
};
use serde_json::json;

/// What the replicas' NATS user may publish and subscribe to: the permissions docs/scale-out.md shows.
const REPLICA_PUBLISH: &[&str] = &[
    "drover.>",
    "_INBOX.>",
    "$JS.API.>",
    "$JS.FC.>",
    "$JS.ACK.>",
    "$KV.desired-state.>",
    "$KV.actual-state.>",
];
const REPLICA_SUBSCRIBE: &[&str] = &["drover.>", "_INBOX.>"];

/// A server block for nats-server: TLS with `certs`, required of every client.
fn nats_tls(certs: &TestCerts) -> String {
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string()
    )
}

/// `drover server` failed to start: its error (and log) must name `flag`, and it must have exited.
fn assert_refused(start: anyhow::Result<Server>, flag: &str) {
    match start {
        Ok(server) => panic!(
            "the replica started without {flag}:\n{}",
            tail(&server.log(), 20)
        ),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("exited"), "{e}");
            assert!(e.contains(flag), "the error does not name {flag}:\n{e}");
            let said = e
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect::<Vec<_>>();
            eprintln!("refused as expected: {said:?}");
        }
    }
}

fn with_args(mut options: ServerOptions, args: &[&str]) -> ServerOptions {
    options.args.extend(args.iter().map(|a| a.to_string()));
    options
}

#[test]
fn replicas_reach_nats_over_tls_with_jwt_credentials_and_route_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::make(dir.path(), "nats").unwrap();
    let operator = NatsOperator::new().unwrap();
    let nats =
        Nats::start_with_config(&format!("{}{}", nats_tls(&certs), operator.server_config()))
            .unwrap_or_else(|e| panic!("{e:#}"));
    let creds = dir.path().join("replica.creds");
    std::fs::write(
        &creds,
        operator
            .user_creds("drover-replica", REPLICA_PUBLISH, REPLICA_SUBSCRIBE)
            .unwrap(),
    )
    .unwrap();
    let (ca, creds) = (
        certs.ca.to_str().unwrap().to_string(),
        creds.to_str().unwrap().to_string(),
    );
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let replica = || ServerOptions::replica(&pg, Some(&nats), secrets.path());

    // The server demands TLS: without its CA the replica cannot check it, and says which flag to give.
    assert_refused(
        Server::start_with(with_args(replica(), &["--nats-creds", &creds])),
        "--nats-ca",
    );
    // TLS, but no credentials.
    assert_refused(
        Server::start_with(with_args(replica(), &["--nats-ca", &ca])),
        "--nats-creds",
    );

    // A user of another operator: the server refuses it, and the replica names the flag that gave it.
    let stranger = dir.path().join("stranger.creds");
    let other = NatsOperator::new().unwrap();
    std::fs::write(&stranger, other.user_creds("stranger", &[], &[]).unwrap()).unwrap();
    assert_refused(
        Server::start_with(with_args(
            replica(),
            &["--nats-ca", &ca, "--nats-creds", stranger.to_str().unwrap()],
        )),
        "refused the credentials in --nats-creds",
    );

    let flags = ["--nats-ca", ca.as_str(), "--nats-creds", creds.as_str()];
    let a = Server::start_with(with_args(replica(), &flags)).unwrap();
    let b = Server::start_with(with_args(replica(), &flags)).unwrap();
    let _agent = a.attached_agent("box", json!({}), &["--allow-shell"]);
    // Created through B, sent over NATS (TLS, JWT user with the documented permissions) to A's agent.
    let task = b
        .create_task(json!({"target": {"node": "box"}, "spec": {"kind": "exec", "argv": ["true"]}}))
        .unwrap();
    let done = b.wait_task_done(task["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        done["runs"][0]["state"],
        "Succeeded",
        "{done}\nA:\n{}\nB:\n{}",
        tail(&a.log(), 30),
        tail(&b.log(), 30)
    );
}

#[test]
fn a_replica_logs_in_to_nats_with_an_nkey_seed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::make(dir.path(), "nats").unwrap();
    let (public, seed) = nkey_user().unwrap();
    // docs/scale-out.md's config: the replicas in an account of their own, with these permissions.
    let nats = Nats::start_with_config(&format!(
        "{}accounts {{\n  DROVER: {{\n    jetstream: enabled\n    users = [\n      {{ nkey: {public}\n        \
         permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }} }} }}\n    ]\n  }}\n  \
         OTHERS: {{ users = [ {{ user: metrics, password: \"not-a-replica\" }} ] }}\n}}\n",
        nats_tls(&certs),
        serde_json::to_string(REPLICA_PUBLISH).unwrap(),
        serde_json::to_string(REPLICA_SUBSCRIBE).unwrap(),
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let seed_file = dir.path().join("replica.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let (ca, seed_file) = (
        certs.ca.to_str().unwrap().to_string(),
        seed_file.to_str().unwrap().to_string(),
    );
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let replica = || ServerOptions::replica(&pg, Some(&nats), secrets.path());

    assert_refused(
        Server::start_with(with_args(replica(), &["--nats-ca", &ca])),
        "--nats-nkey",
    );
    let server = Server::start_with(with_args(
        replica(),
        &["--nats-ca", &ca, "--nats-nkey", &seed_file],
    ))
    .unwrap();
    let _agent = server.attached_agent("box", json!({}), &[]);
}

#[test]
fn a_replica_reaches_postgresql_over_tls_and_says_what_to_add_when_it_is_required() {
    let pg = Postgres::start_tls().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let ca = pg.ca_path().unwrap().display().to_string();
    let database = |query: &str| ServerOptions {
        args: vec!["--database".into(), format!("{}{query}", pg.url("drover"))],
    };

    // pg_hba.conf has hostssl lines only: a plain connection is refused.
    assert_refused(Server::start_with(database("")), "sslmode=require");
    // verify-full checks the certificate: this one's CA is not a system root.
    assert_refused(
        Server::start_with(database("?sslmode=verify-full")),
        "sslrootcert=FILE",
    );
    assert_refused(
        Server::start_with(database(&format!(
            "?sslmode=verify-full&sslrootcert={ca}.missing"
        ))),
        "sslrootcert",
    );

    // Encrypted without checking the certificate.
    let mut server = Server::start_with(database("?sslmode=require")).unwrap();
    server.stop();
    // Encrypted and checked, certificate and host name.
    let server =
        Server::start_with(database(&format!("?sslmode=verify-full&sslrootcert={ca}"))).unwrap();
    let _agent = server.attached_agent("box", json!({}), &[]);
}
