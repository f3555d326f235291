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
