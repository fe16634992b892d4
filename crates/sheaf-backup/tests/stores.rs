//! Both object stores against the real thing: [`FsStore`] in a temporary
//! directory, [`S3Store`] against moto's S3 server (tests/support/moto.rs),
//! in path-style and virtual-hosted addressing. One test body
//! ([`exercise`]) runs against each.

#[path = "support/moto.rs"]
mod moto;

use bytes::Bytes;
use moto::Moto;
use sheaf_backup::store::fs::FsStore;
use sheaf_backup::store::s3::{S3Config, S3Store};
use sheaf_backup::store::ObjectInfo;
use sheaf_backup::{ObjectStore, StoreError};

const ACCESS_KEY: &str = "AKIASHEAFTESTKEY0001";
const SECRET_KEY: &str = "sheaf-test-secret/DO-NOT-PRINT+K3y";
const SESSION_TOKEN: &str = "sheaf-test-session-token-DO-NOT-PRINT";

/// Keys that need encoding in a URL, or escaping in XML.
const AWKWARD_KEYS: [&str; 6] = [
    "dir one/file two.bin",
    "ünïcödé/ключ/鍵.dat",
    "plus+and=equals/a+b=c",
    "amp&lt<gt>quote\"apos'/x",
    "percent%20not-a-space",
    "tilde~star*paren(1)[2]{3}!@#$,;",
];

fn config(moto: &Moto, bucket: &str) -> S3Config {
    S3Config {
        endpoint: Some(moto.endpoint.clone()),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        prefix: String::new(),
        path_style: true,
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        session_token: Some(SESSION_TOKEN.into()),
        ca_bundle: None,
    }
}

fn s3(cfg: S3Config) -> S3Store {
    S3Store::new(cfg).expect("a valid S3 config")
}

fn keys(objects: &[ObjectInfo]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

/// Asserts that nothing a user may see of `text` holds a credential.
fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET_KEY), "the secret key leaked: {text}");
    assert!(!text.contains(SESSION_TOKEN), "the session token leaked: {text}");
}

/// The behaviour every store must have, on an empty store.
async fn exercise(store: &dyn ObjectStore) {
    let before = chrono::Utc::now().timestamp();
    assert_eq!(store.list("").await.expect("list"), vec![]);
    assert_eq!(store.get("a/b/c.txt").await.expect("get"), None);
    assert!(!store.exists("a/b/c.txt").await.expect("exists"));

    store.put("a/b/c.txt", Bytes::from_static(b"first")).await.expect("put");
    assert_eq!(store.get("a/b/c.txt").await.expect("get"), Some(Bytes::from_static(b"first")));
    assert!(store.exists("a/b/c.txt").await.expect("exists"));
    assert!(!store.exists("a/b").await.expect("exists of a directory-like prefix"));
    assert_eq!(store.get("a/b").await.expect("get of a directory-like prefix"), None);

    // Overwriting replaces the whole object.
    store.put("a/b/c.txt", Bytes::from_static(b"second, longer")).await.expect("overwrite");
    assert_eq!(store.get("a/b/c.txt").await.expect("get"), Some(Bytes::from_static(b"second, longer")));

    store.put("empty", Bytes::new()).await.expect("put of nothing");
    assert_eq!(store.get("empty").await.expect("get"), Some(Bytes::new()));

    let big: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i: u32| (i % 251) as u8).collect();
    store.put("a/big", Bytes::from(big.clone())).await.expect("put of 3 MiB");
    assert_eq!(store.get("a/big").await.expect("get"), Some(Bytes::from(big.clone())));

    for key in AWKWARD_KEYS {
        store.put(key, Bytes::from(key.as_bytes().to_vec())).await.unwrap_or_else(|e| panic!("put {key:?}: {e}"));
    }
    for key in AWKWARD_KEYS {
        let got = store.get(key).await.unwrap_or_else(|e| panic!("get {key:?}: {e}"));
        assert_eq!(got, Some(Bytes::from(key.as_bytes().to_vec())), "{key:?}");
        assert!(store.exists(key).await.unwrap_or_else(|e| panic!("exists {key:?}: {e}")), "{key:?}");
    }

    let all = store.list("").await.expect("list");
    let mut expected: Vec<&str> = vec!["a/b/c.txt", "a/big", "empty"];
    expected.extend(AWKWARD_KEYS);
    expected.sort();
    assert_eq!(keys(&all), expected);
    let after = chrono::Utc::now().timestamp();
    for object in &all {
        let size = match object.key.as_str() {
            "a/b/c.txt" => 14,
            "a/big" => big.len() as u64,
            "empty" => 0,
            key => key.len() as u64,
        };
        assert_eq!(object.size, size, "{}", object.key);
        assert!(object.modified >= before - 5 && object.modified <= after + 5, "{object:?} not in {before}..{after}");
    }

    // Prefixes are of keys, not of directories.
    assert_eq!(keys(&store.list("a/").await.expect("list a/")), ["a/b/c.txt", "a/big"]);
    assert_eq!(keys(&store.list("a/b").await.expect("list a/b")), ["a/b/c.txt", "a/big"]);
    assert_eq!(keys(&store.list("a/b/").await.expect("list a/b/")), ["a/b/c.txt"]);
    assert_eq!(keys(&store.list("ünï").await.expect("list ünï")), ["ünïcödé/ключ/鍵.dat"]);
    assert_eq!(keys(&store.list("plus+and=").await.expect("list plus+and=")), ["plus+and=equals/a+b=c"]);
    assert_eq!(keys(&store.list("dir one/").await.expect("list dir one/")), ["dir one/file two.bin"]);
    assert_eq!(store.list("nothing/").await.expect("list nothing/"), vec![]);

    store.delete("a/b/c.txt").await.expect("delete");
    assert_eq!(store.get("a/b/c.txt").await.expect("get"), None);
    assert!(!store.exists("a/b/c.txt").await.expect("exists"));
    store.delete("a/b/c.txt").await.expect("delete of a deleted object");
    store.delete("never/was").await.expect("delete of a missing object");
    for key in AWKWARD_KEYS {
        store.delete(key).await.unwrap_or_else(|e| panic!("delete {key:?}: {e}"));
    }
    assert_eq!(keys(&store.list("").await.expect("list")), ["a/big", "empty"]);
}

#[tokio::test]
async fn fs_store_round_trips() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FsStore::new(dir.path()).expect("a store");
    assert_eq!(store.describe(), dir.path().display().to_string());
    exercise(&store).await;
}

#[tokio::test]
async fn s3_store_round_trips_path_style() {
    let moto = Moto::start();
    moto.create_bucket("path-style");
    let store = s3(config(&moto, "path-style"));
    exercise(&store).await;
}

#[tokio::test]
async fn s3_store_round_trips_virtual_hosted() {
    let moto = Moto::start();
    moto.create_bucket("virtual-hosted");
    let store = s3(S3Config {
        endpoint: Some(format!("http://localhost:{}", moto.port)),
        path_style: false,
        ..config(&moto, "virtual-hosted")
    });
    assert_eq!(store.describe(), format!("s3://virtual-hosted/ (http://localhost:{})", moto.port));
    exercise(&store).await;
    // The bucket was named by the host alone: path-style sees the objects.
    let path_style = s3(config(&moto, "virtual-hosted"));
    assert_eq!(keys(&path_style.list("").await.expect("list")), ["a/big", "empty"]);
}

/// moto checks signatures here, as AWS does: every kind of request is
/// signed right, in both addressing styles, and credentials it does not
/// know are `Denied` without showing the secret.
///
/// moto recomputes the signature from the URL as its web framework
/// re-encodes it, which differs from SigV4's encoding for anything but
/// `A-Z a-z 0-9 - . _ ~ /` (boto3's own requests fail there the same way),
/// so these keys and prefixes keep to those; the encoding itself is
/// checked against AWS's published examples in `store::s3`'s unit tests.
#[tokio::test]
async fn s3_signatures_are_checked_and_bad_credentials_denied() {
    let moto = Moto::start();
    moto.create_bucket("guarded");
    let (access_key, secret_key) = moto.create_s3_user("sheaf");
    moto.require_signatures();
    let good = S3Config {
        access_key: access_key.clone(),
        secret_key: secret_key.clone(),
        session_token: None,
        ..config(&moto, "guarded")
    };
    let virtual_hosted =
        S3Config { endpoint: Some(format!("http://localhost:{}", moto.port)), path_style: false, ..good.clone() };
    for (style, cfg) in [("path", good.clone()), ("virtual", virtual_hosted)] {
        let store = s3(cfg).with_page_size(2);
        let keys_written: Vec<String> = (0..5).map(|i| format!("{style}/chunk-{i}.bin")).collect();
        for key in &keys_written {
            store.put(key, Bytes::from(key.clone().into_bytes())).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
        assert_eq!(
            store.get(&keys_written[0]).await.expect("get"),
            Some(Bytes::from(keys_written[0].clone().into_bytes()))
        );
        assert_eq!(store.get("nothing").await.expect("get of nothing"), None);
        assert!(store.exists(&keys_written[1]).await.expect("exists"));
        assert!(!store.exists("nothing").await.expect("exists of nothing"));
        let listed = store.list(style).await.expect("list");
        assert_eq!(keys(&listed), keys_written.iter().map(String::as_str).collect::<Vec<_>>());
        store.delete(&keys_written[2]).await.expect("delete");
        store.delete("nothing").await.expect("delete of nothing");
        assert_eq!(store.list(style).await.expect("list").len(), 4);
    }

    let wrong_secret = s3(S3Config { secret_key: SECRET_KEY.into(), ..good.clone() });
    let unknown_key = s3(config(&moto, "guarded"));
    for (store, key_id) in [(&wrong_secret, access_key.as_str()), (&unknown_key, ACCESS_KEY)] {
        let errors = [
            store.put("k", Bytes::from_static(b"x")).await.expect_err("put"),
            store.get("k").await.expect_err("get"),
            store.list("").await.expect_err("list"),
            store.exists("k").await.expect_err("exists"),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(matches!(err, StoreError::Denied(_)), "{err:?}");
            assert!(text.contains("refused the credentials") && text.contains(key_id), "{text}");
            assert!(!text.contains(&secret_key), "the secret key leaked: {text}");
            assert_no_secret(&text);
            assert_no_secret(&format!("{err:?}"));
        }
    }
}

/// A test CA and a certificate it issued for moto (`localhost`,
/// `tls-bucket.localhost`, 127.0.0.1), made by the `openssl` tool.
struct TestPki {
    ca_cert: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
}

impl TestPki {
    fn make(dir: &std::path::Path) -> TestPki {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("the openssl tool (Debian's openssl, which ca-certificates brings) runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sheaf-test-ca"],
                &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            ]
            .concat(),
        );
        openssl(
            &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,DNS:tls-bucket.localhost,IP:127.0.0.1\n\
             basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        TestPki { ca_cert: dir.join("ca.pem"), server_cert: dir.join("server.pem"), server_key: dir.join("server.key") }
    }
}

/// S3 over HTTPS: a server whose CA is in `ca_bundle` (a path or PEM
/// text) is trusted, in both addressing styles; without it the server is
/// refused.
#[tokio::test]
async fn s3_store_speaks_tls_with_extra_roots() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = TestPki::make(dir.path());
    let moto = Moto::start_tls(&pki.server_cert, &pki.server_key);
    let ca_pem = std::fs::read_to_string(&pki.ca_cert).expect("read the CA");

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("the CA"))
        .build()
        .expect("an HTTPS client");
    let created = client.put(format!("{}/tls-bucket", moto.endpoint)).send().await.expect("PUT /tls-bucket");
    assert!(created.status().is_success(), "create bucket: {}", created.status());

    let by_path = s3(S3Config { ca_bundle: Some(pki.ca_cert.display().to_string()), ..config(&moto, "tls-bucket") });
    exercise(&by_path).await;

    let virtual_hosted = s3(S3Config {
        endpoint: Some(format!("https://localhost:{}", moto.port)),
        path_style: false,
        ca_bundle: Some(ca_pem.clone()),
        ..config(&moto, "tls-bucket")
    });
    virtual_hosted.put("over/tls", Bytes::from_static(b"secret data")).await.expect("put over TLS");
    assert_eq!(by_path.get("over/tls").await.expect("get"), Some(Bytes::from_static(b"secret data")));

    let untrusted = s3(config(&moto, "tls-bucket"));
    let err = untrusted.get("over/tls").await.expect_err("a server no root vouches for");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(text.starts_with(&format!("cannot reach {}: ", moto.endpoint)), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_no_secret(&text);
}

#[tokio::test]
async fn s3_store_lists_page_by_page() {
    let moto = Moto::start();
    moto.create_bucket("pages");
    let store = s3(config(&moto, "pages")).with_page_size(2);
    let mut expected: Vec<String> = (0..7).map(|i| format!("chunk/{i:02}")).collect();
    expected.push("other".into());
    for key in &expected {
        store.put(key, Bytes::from_static(b"x")).await.expect("put");
    }
    let all = store.list("").await.expect("list");
    assert_eq!(keys(&all), expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(store.list("chunk/").await.expect("list chunk/").len(), 7);
    assert_eq!(keys(&store.list("chunk/0").await.expect("list chunk/0"))[..2], ["chunk/00", "chunk/01"]);
}

#[tokio::test]
async fn s3_store_keeps_to_its_prefix() {
    let moto = Moto::start();
    moto.create_bucket("shared");
    let whole = s3(config(&moto, "shared"));
    let node1 = s3(S3Config { prefix: "/sheaf//node1".into(), ..config(&moto, "shared") }).with_page_size(2);
    let node2 = s3(S3Config { prefix: "sheaf/node2/".into(), ..config(&moto, "shared") });
    assert_eq!(node1.describe(), format!("s3://shared/sheaf/node1/ ({})", moto.endpoint));

    for key in ["a", "b/c", "d+e f"] {
        node1.put(key, Bytes::from_static(b"one")).await.expect("put");
    }
    node2.put("a", Bytes::from_static(b"two")).await.expect("put");
    whole.put("sheaf/node10", Bytes::from_static(b"not under node1/")).await.expect("put");

    assert_eq!(keys(&node1.list("").await.expect("list")), ["a", "b/c", "d+e f"]);
    assert_eq!(keys(&node1.list("b").await.expect("list")), ["b/c"]);
    assert_eq!(keys(&node2.list("").await.expect("list")), ["a"]);
    assert_eq!(node1.get("a").await.expect("get"), Some(Bytes::from_static(b"one")));
    assert_eq!(node2.get("a").await.expect("get"), Some(Bytes::from_static(b"two")));
    assert_eq!(
        keys(&whole.list("sheaf/").await.expect("list")),
        ["sheaf/node1/a", "sheaf/node1/b/c", "sheaf/node1/d+e f", "sheaf/node10", "sheaf/node2/a"]
    );
    node1.delete("a").await.expect("delete");
    assert!(!node1.exists("a").await.expect("exists"));
    assert!(node2.exists("a").await.expect("exists"));
}

#[tokio::test]
async fn s3_missing_bucket_is_a_config_error() {
    let moto = Moto::start();
    let store = s3(config(&moto, "no-such-bucket"));
    let errors = [
        store.put("k", Bytes::from_static(b"x")).await.expect_err("put"),
        store.get("k").await.expect_err("get"),
        store.list("").await.expect_err("list"),
        store.delete("k").await.expect_err("delete"),
    ];
    for err in errors {
        let text = err.to_string();
        assert!(matches!(err, StoreError::Config(_)), "{err:?}");
        assert!(text.contains("bucket no-such-bucket does not exist"), "{text}");
        assert!(text.contains(&moto.endpoint), "{text}");
        assert_no_secret(&text);
        assert_no_secret(&format!("{err:?}"));
    }
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let store = s3(S3Config {
        endpoint: Some(endpoint.clone()),
        bucket: "anything".into(),
        region: "us-east-1".into(),
        prefix: String::new(),
        path_style: true,
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        session_token: Some(SESSION_TOKEN.into()),
        ca_bundle: None,
    });
    let err = store.get("k").await.expect_err("get from nowhere");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(text.starts_with(&format!("cannot reach {endpoint}: ")), "{text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
}

#[tokio::test]
async fn s3_never_shows_credentials() {
    let moto = Moto::start();
    let cfg = config(&moto, "secrets");
    assert_no_secret(&format!("{cfg:?}"));
    assert_no_secret(&format!("{cfg:#?}"));
    let store = s3(cfg);
    assert_no_secret(&format!("{store:?}"));
    assert_no_secret(&format!("{store:#?}"));
    assert_no_secret(&store.describe());
    assert!(format!("{store:?}").contains(ACCESS_KEY));
}

#[test]
fn s3_config_errors_name_the_field() {
    let base = S3Config {
        endpoint: Some("http://127.0.0.1:9000".into()),
        bucket: "good-bucket".into(),
        region: "us-east-1".into(),
        prefix: String::new(),
        path_style: true,
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        session_token: None,
        ca_bundle: None,
    };
    let cases = [
        (S3Config { bucket: "UPPER".into(), ..base.clone() }, "bucket name \"UPPER\""),
        (S3Config { region: String::new(), ..base.clone() }, "region"),
        (S3Config { endpoint: Some("127.0.0.1:9000".into()), ..base.clone() }, "endpoint"),
        (S3Config { endpoint: Some("unix:///run/s3.sock".into()), ..base.clone() }, "endpoint"),
        (S3Config { endpoint: Some("http://".into()), ..base.clone() }, "endpoint"),
        (S3Config { ca_bundle: Some("/nonexistent/ca.pem".into()), ..base.clone() }, "ca_bundle"),
        (S3Config { ca_bundle: Some("-----BEGIN CERTIFICATE-----\nnot base64\n".into()), ..base.clone() }, "ca_bundle"),
    ];
    for (cfg, expected) in cases {
        let err = S3Store::new(cfg).expect_err(expected);
        let text = err.to_string();
        assert!(matches!(err, StoreError::Config(_)), "{expected}: {err:?}");
        assert!(text.contains(expected), "{expected}: {text}");
        assert_no_secret(&text);
    }
}

#[test]
fn fs_store_needs_a_writable_directory() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing");
    let err = FsStore::new(&missing).expect_err("a missing directory");
    assert!(
        matches!(&err, StoreError::Config(m) if m.contains(&missing.display().to_string()) && m.contains("does not exist")),
        "{err}"
    );

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write a file");
    let err = FsStore::new(&file).expect_err("a file");
    assert!(
        matches!(&err, StoreError::Config(m) if m.contains(&file.display().to_string()) && m.contains("not a directory")),
        "{err}"
    );
}

#[tokio::test]
async fn fs_store_refuses_keys_outside_its_root() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FsStore::new(dir.path().join("")).expect("a store");
    for key in ["", "/etc/passwd", "../escape", "a/../../escape", "a\0b"] {
        let err = store.put(key, Bytes::from_static(b"x")).await.expect_err(key);
        assert!(matches!(err, StoreError::Config(_)), "{key:?}: {err:?}");
        assert!(matches!(store.get(key).await, Err(StoreError::Config(_))), "{key:?}");
    }
    assert!(matches!(store.list("../").await, Err(StoreError::Config(_))));
}

#[tokio::test]
async fn fs_store_hides_temporary_files_and_cleans_up() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = FsStore::new(dir.path()).expect("a store");
    store.put("x/y/z", Bytes::from_static(b"data")).await.expect("put");
    // What a writer that crashed mid-put leaves behind.
    std::fs::write(dir.path().join("x/y/.sheaf-tmp.123.0"), b"half").expect("write a stray temp file");
    assert_eq!(keys(&store.list("").await.expect("list")), ["x/y/z"]);

    let entries: Vec<_> = std::fs::read_dir(dir.path().join("x/y")).expect("read_dir").collect();
    assert_eq!(entries.len(), 2, "only the object and the stray file: {entries:?}");

    std::fs::remove_file(dir.path().join("x/y/.sheaf-tmp.123.0")).expect("remove");
    store.delete("x/y/z").await.expect("delete");
    assert!(!dir.path().join("x").exists(), "emptied directories are removed");
    assert!(dir.path().exists(), "the root stays");
}
