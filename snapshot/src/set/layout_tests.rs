use super::*;

#[test]
fn parse_and_as_str_round_trip() {
    for layout in [
        Layout::Single,
        Layout::Duplicate,
        Layout::Striped { stripe_blocks: 3 },
    ] {
        assert_eq!(Layout::parse(layout.as_str(), 3).expect("parse"), layout);
        assert_eq!(layout.to_string(), layout.as_str());
    }
    assert_eq!(
        Layout::parse(" Duplicate ", 0).expect("parse"),
        Layout::Duplicate
    );
    assert_eq!(
        Layout::parse("striped", DEFAULT_STRIPE_BLOCKS).expect("parse"),
        Layout::Striped { stripe_blocks: 8 }
    );
}

#[test]
fn parse_refuses_alternate_unknown_and_zero_stripe() {
    let err = Layout::parse("alternate", 1).expect_err("alternate");
    assert!(matches!(err, SetError::AlternateIsNotASet));
    assert!(err.to_string().contains("single set"), "{err}");
    let err = Layout::parse("mirror", 1).expect_err("unknown");
    assert!(err.to_string().contains("\"mirror\""), "{err}");
    assert!(
        err.to_string().contains("single, duplicate or striped"),
        "{err}"
    );
    assert!(matches!(
        Layout::parse("striped", 0),
        Err(SetError::ZeroStripe)
    ));
}
