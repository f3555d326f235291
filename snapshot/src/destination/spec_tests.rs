use super::*;
use crate::DestinationError;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY";

fn creds_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), text).expect("write creds");
    f
}

#[test]
fn parses_good_flags() {
    let f = creds_file(&format!(
        "# test creds\n\naccess_key_id = AKIDEXAMPLE\n  secret_access_key=  {SECRET}  \n"
    ));
    let flag = format!(
        "backup=s3://bucket/some/prefix, endpoint=http://127.0.0.1:9000,region=eu-west-1,allow-http,credentials-file={}",
        f.path().display()
    );
    let spec = DestinationSpec::parse_flag(&flag).expect("parse");
    assert_eq!(
        spec,
        DestinationSpec {
            name: "backup".into(),
            url: "s3://bucket/some/prefix".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "eu-west-1".into(),
            allow_http: true,
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
        }
    );
    let debug = format!("{spec:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains("AKIDEXAMPLE"),
        "{debug}"
    );
    assert!(
        debug.contains("<redacted>") && debug.contains("eu-west-1"),
        "{debug}"
    );

    let local = DestinationSpec::parse_flag("local=file:///var/lib/basalt/snaps").expect("file");
    assert_eq!(local.name, "local");
    assert_eq!(local.url, "file:///var/lib/basalt/snaps");
    assert!(local.endpoint.is_empty() && !local.allow_http && local.access_key_id.is_empty());
}

#[test]
fn refuses_bad_flags_naming_the_part() {
    for (flag, part) in [
        ("", ""),
        ("just-a-name", "just-a-name"),
        ("=s3://b", ""),
        ("bad name=s3://b", "bad name"),
        ("n=http://host/b", "http://host/b"),
        ("n=s3://b,endpoint", "endpoint"),
        ("n=s3://b,region=", "region"),
        ("n=s3://b,allow-http=yes", "allow-http"),
        ("n=s3://b,region=a,region=b", "region"),
        ("n=file:///d,allow-http", "file:///d"),
        ("n=s3://b,credentials-file", "credentials-file"),
    ] {
        match DestinationSpec::parse_flag(flag) {
            Err(DestinationError::BadFlag { part: p, .. }) => assert_eq!(p, part, "{flag}"),
            other => panic!("{flag:?}: expected BadFlag, got {other:?}"),
        }
    }
    // An unknown option's value is never echoed: it might be a secret.
    let err = DestinationSpec::parse_flag(&format!("n=s3://b,secret={SECRET}"))
        .expect_err("unknown option");
    let msg = err.to_string();
    assert!(
        msg.contains("\"secret\"") && msg.contains("unknown option"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET), "{msg}");
}

#[test]
fn bad_credentials_files_never_leak_the_secret() {
    let cases = [
        format!("access_key_id = AK\nsecret_access_key {SECRET}\n"),
        format!("access_key_id = AK\n{SECRET}\n"),
        format!("access_key_id = AK\nsecret = {SECRET}\n"),
        format!("access_key_id = AK\nsecret_access_key = {SECRET}\nsecret_access_key = {SECRET}\n"),
        format!("secret_access_key = {SECRET}\n"),
        "access_key_id = AK\nsecret_access_key =\n".to_owned(),
    ];
    for text in &cases {
        let f = creds_file(text);
        let flag = format!("n=s3://b,credentials-file={}", f.path().display());
        let err = DestinationSpec::parse_flag(&flag).expect_err(text);
        assert!(
            matches!(err, DestinationError::CredentialsFile { .. }),
            "{err:?}"
        );
        let (msg, debug) = (err.to_string(), format!("{err:?}"));
        assert!(!msg.contains(SECRET) && !debug.contains(SECRET), "{msg}");
        assert!(!msg.contains("wJalr"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    }
    let err = DestinationSpec::parse_flag("n=s3://b,credentials-file=/nonexistent/creds")
        .expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/creds"), "{err}");
}

#[test]
fn azure_and_gcs_flags_read_their_own_credentials() {
    let f = creds_file(&format!(
        "account_name = devstoreaccount1\naccount_key = {SECRET}\n"
    ));
    let flag = format!(
        "blob=az://backups/vm, endpoint=http://127.0.0.1:10000/devstoreaccount1, allow-http, credentials-file={}",
        f.path().display()
    );
    let spec = DestinationSpec::parse_flag(&flag).expect("azure");
    assert_eq!(spec.kind(), Some(StoreKind::Azure));
    assert_eq!(spec.access_key_id, "devstoreaccount1");
    assert_eq!(spec.secret_access_key, SECRET);
    // S3 keys are not Azure keys: the message says which are.
    let s3 = creds_file(&format!(
        "access_key_id = AK\nsecret_access_key = {SECRET}\n"
    ));
    let err = DestinationSpec::parse_flag(&format!(
        "blob=az://c,credentials-file={}",
        s3.path().display()
    ))
    .expect_err("s3 keys for azure");
    let msg = err.to_string();
    assert!(
        msg.contains("account_name") && !msg.contains(SECRET),
        "{msg}"
    );

    let key = format!(
        r#"{{"type": "service_account", "client_email": "basalt@p.iam.gserviceaccount.com", "private_key": "{SECRET}"}}"#
    );
    let k = creds_file(&key);
    let spec = DestinationSpec::parse_flag(&format!(
        "gcs=gs://bucket/p,credentials-file={}",
        k.path().display()
    ))
    .expect("gcs");
    assert_eq!(spec.kind(), Some(StoreKind::Gcs));
    assert_eq!(spec.access_key_id, "basalt@p.iam.gserviceaccount.com");
    assert_eq!(spec.secret_access_key, key);
    for text in [
        format!("not json {SECRET}"),
        format!(r#"{{"private_key": "{SECRET}"}}"#),
        r#"{"client_email": "a@b"}"#.to_owned(),
    ] {
        let k = creds_file(&text);
        let err = DestinationSpec::parse_flag(&format!(
            "gcs=gs://bucket,credentials-file={}",
            k.path().display()
        ))
        .expect_err(&text);
        let msg = err.to_string();
        assert!(
            matches!(err, DestinationError::CredentialsFile { .. }) && !msg.contains(SECRET),
            "{msg}"
        );
    }
}

#[test]
fn options_a_store_does_not_take_are_refused() {
    let az = creds_file(&format!("account_name = a\naccount_key = {SECRET}\n"));
    let key = creds_file(r#"{"client_email": "a@b", "private_key": "k"}"#);
    for (flag, words) in [
        (
            format!(
                "g=gs://b,endpoint=http://x,credentials-file={}",
                key.path().display()
            ),
            "gcs_base_url",
        ),
        (
            format!(
                "a=az://c,region=eu,credentials-file={}",
                az.path().display()
            ),
            "no region",
        ),
        ("a=az://c".to_owned(), "account_name"),
        ("s=s3://b".to_owned(), "access_key_id"),
        ("d=file:///d,region=eu".to_owned(), "directory"),
    ] {
        let err = DestinationSpec::parse_flag(&flag).expect_err(&flag);
        assert!(err.to_string().contains(words), "{flag}: {err}");
    }
}
