use super::*;

const VECTOR_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const VECTOR_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const VECTOR_TS: i64 = 1649367553;
const VECTOR_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
const VECTOR_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

const TOLERANCE: Duration = Duration::from_secs(300);

fn signing(secret: &str) -> SigningKey {
    SigningKey::parse(secret).expect("test secret parses")
}

fn verifying(key: &str) -> VerifyingKey {
    VerifyingKey::parse(key).expect("test key parses")
}

/// Checks at `VECTOR_TS` itself.
fn check(keys: &[VerifyingKey], header: &str, body: &[u8]) -> Result<(), VerifyError> {
    verify(
        keys,
        VECTOR_ID,
        &VECTOR_TS.to_string(),
        header,
        body,
        VECTOR_TS,
        TOLERANCE,
    )
}

#[test]
fn matches_the_published_test_vector() {
    let header = sign(&[signing(VECTOR_SECRET)], VECTOR_ID, VECTOR_TS, VECTOR_BODY);
    assert_eq!(header, VECTOR_SIG);
    assert_eq!(
        check(&[verifying(VECTOR_SECRET)], VECTOR_SIG, VECTOR_BODY),
        Ok(())
    );
}

#[test]
fn two_secrets_give_two_signatures_in_order_each_verifying_alone() {
    let second = generate_symmetric().expect("rng");
    let header = sign(
        &[signing(VECTOR_SECRET), signing(&second)],
        VECTOR_ID,
        VECTOR_TS,
        VECTOR_BODY,
    );
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2, "{header}");
    assert_eq!(parts[0], VECTOR_SIG);
    assert!(parts[1].starts_with("v1,"));
    for key in [VECTOR_SECRET, second.as_str()] {
        assert_eq!(check(&[verifying(key)], &header, VECTOR_BODY), Ok(()));
    }
}

#[test]
fn v1a_round_trip_with_a_generated_pair() {
    let (sk, pk) = generate_asymmetric().expect("rng");
    assert!(sk.starts_with("whsk_") && pk.starts_with("whpk_"));
    let key = signing(&sk);
    assert_eq!(key.public_key().as_deref(), Some(pk.as_str()));

    let header = sign(&[key], VECTOR_ID, VECTOR_TS, VECTOR_BODY);
    assert!(header.starts_with("v1a,"), "{header}");
    assert_eq!(check(&[verifying(&pk)], &header, VECTOR_BODY), Ok(()));
    // A whsec_ key does not verify a v1a signature.
    assert_eq!(
        check(&[verifying(VECTOR_SECRET)], &header, VECTOR_BODY),
        Err(VerifyError::NoValidSignature)
    );
}

#[test]
fn mixed_keys_sign_in_order_and_verify_by_version() {
    let (sk, pk) = generate_asymmetric().expect("rng");
    let header = sign(
        &[signing(&sk), signing(VECTOR_SECRET)],
        VECTOR_ID,
        VECTOR_TS,
        VECTOR_BODY,
    );
    let parts: Vec<&str> = header.split(' ').collect();
    assert_eq!(parts.len(), 2);
    assert!(parts[0].starts_with("v1a,"));
    assert_eq!(parts[1], VECTOR_SIG);
    assert_eq!(check(&[verifying(&pk)], &header, VECTOR_BODY), Ok(()));
    assert_eq!(
        check(&[verifying(VECTOR_SECRET)], &header, VECTOR_BODY),
        Ok(())
    );
}

#[test]
fn whsk_accepts_the_seed_or_seed_and_matching_public_key() {
    // RFC 8032 section 7.1, test 1.
    let seed: [u8; 32] = [
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c,
        0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae,
        0x7f, 0x60,
    ];
    let public: [u8; 32] = [
        0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07,
        0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07,
        0x51, 0x1a,
    ];
    let whpk = format!("whpk_{}", BASE64.encode(public));
    let from_seed = signing(&format!("whsk_{}", BASE64.encode(seed)));
    assert_eq!(from_seed.public_key(), Some(whpk.clone()));

    let pair = [seed.as_slice(), public.as_slice()].concat();
    let from_pair = signing(&format!("whsk_{}", BASE64.encode(&pair)));
    assert_eq!(from_pair.public_key(), Some(whpk.clone()));
    // Ed25519 is deterministic: both forms sign alike.
    assert_eq!(
        sign(&[from_seed], VECTOR_ID, VECTOR_TS, VECTOR_BODY),
        sign(&[from_pair], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    );
}

#[test]
fn a_64_byte_whsk_with_a_foreign_public_half_is_refused() {
    let (sk_a, _) = generate_asymmetric().expect("rng");
    let (_, pk_b) = generate_asymmetric().expect("rng");
    let seed = BASE64.decode(&sk_a["whsk_".len()..]).expect("own base64");
    let public = BASE64.decode(&pk_b["whpk_".len()..]).expect("own base64");
    let pair = [seed, public].concat();
    let secret = format!("whsk_{}", BASE64.encode(&pair));
    assert!(matches!(
        SigningKey::parse(&secret),
        Err(SignatureError::KeypairMismatch)
    ));
}

#[test]
fn rejects_a_tampered_body() {
    let mut body = VECTOR_BODY.to_vec();
    body[2] ^= 1;
    assert_eq!(
        check(&[verifying(VECTOR_SECRET)], VECTOR_SIG, &body),
        Err(VerifyError::NoValidSignature)
    );

    let (sk, pk) = generate_asymmetric().expect("rng");
    let header = sign(&[signing(&sk)], VECTOR_ID, VECTOR_TS, VECTOR_BODY);
    assert_eq!(
        check(&[verifying(&pk)], &header, &body),
        Err(VerifyError::NoValidSignature)
    );
}

#[test]
fn rejects_a_wrong_key_a_wrong_id_and_garbage() {
    let other = generate_symmetric().expect("rng");
    assert_eq!(
        check(&[verifying(&other)], VECTOR_SIG, VECTOR_BODY),
        Err(VerifyError::NoValidSignature)
    );
    let (_, other_pk) = generate_asymmetric().expect("rng");
    let (sk, _) = generate_asymmetric().expect("rng");
    let header = sign(&[signing(&sk)], VECTOR_ID, VECTOR_TS, VECTOR_BODY);
    assert_eq!(
        check(&[verifying(&other_pk)], &header, VECTOR_BODY),
        Err(VerifyError::NoValidSignature)
    );
    // The id is signed.
    assert_eq!(
        verify(
            &[verifying(VECTOR_SECRET)],
            "msg_other",
            &VECTOR_TS.to_string(),
            VECTOR_SIG,
            VECTOR_BODY,
            VECTOR_TS,
            TOLERANCE,
        ),
        Err(VerifyError::NoValidSignature)
    );
    // Unknown versions, bad base64, truncated tags, empty headers and no keys.
    let key = [verifying(VECTOR_SECRET)];
    for header in [
        "",
        "   ",
        "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        "v1,!!!",
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPe",
        "v1a,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    ] {
        assert_eq!(
            check(&key, header, VECTOR_BODY),
            Err(VerifyError::NoValidSignature),
            "{header:?}"
        );
    }
    assert_eq!(
        check(&[], VECTOR_SIG, VECTOR_BODY),
        Err(VerifyError::NoValidSignature)
    );
    // A valid signature among unknown ones still verifies.
    let noisy = format!("v9,abc v1,!!! {VECTOR_SIG} v1a,xyz");
    assert_eq!(check(&key, &noisy, VECTOR_BODY), Ok(()));
}

#[test]
fn timestamps_outside_the_tolerance_are_refused_both_ways() {
    let key = [verifying(VECTOR_SECRET)];
    let at = |now: i64| {
        verify(
            &key,
            VECTOR_ID,
            &VECTOR_TS.to_string(),
            VECTOR_SIG,
            VECTOR_BODY,
            now,
            TOLERANCE,
        )
    };
    assert_eq!(at(VECTOR_TS + 300), Ok(()));
    assert_eq!(at(VECTOR_TS - 300), Ok(()));
    // Too old: now is well past the timestamp.
    assert_eq!(
        at(VECTOR_TS + 301),
        Err(VerifyError::Expired {
            timestamp: VECTOR_TS,
            skew_secs: 301,
            tolerance_secs: 300,
        })
    );
    // In the future.
    assert!(matches!(
        at(VECTOR_TS - 301),
        Err(VerifyError::Expired {
            skew_secs: -301,
            ..
        })
    ));
    // No overflow at the extremes.
    assert!(matches!(at(i64::MIN), Err(VerifyError::Expired { .. })));
    assert!(matches!(at(i64::MAX), Err(VerifyError::Expired { .. })));
}

#[test]
fn unparseable_timestamps_are_refused() {
    for ts in [
        "",
        "abc",
        "-1649367553",
        "+1649367553",
        " 1649367553",
        "1649367553.5",
        "99999999999999999999999",
    ] {
        assert_eq!(
            verify(
                &[verifying(VECTOR_SECRET)],
                VECTOR_ID,
                ts,
                VECTOR_SIG,
                VECTOR_BODY,
                VECTOR_TS,
                TOLERANCE,
            ),
            Err(VerifyError::BadTimestamp),
            "{ts:?}"
        );
    }
}

#[test]
fn parse_errors_do_not_echo_the_secret() {
    let cases: Vec<(String, &str)> = vec![
        ("nope_SuperSecretValue123".into(), "SuperSecretValue123"),
        ("whsec_Secret!Secret!Secret!".into(), "Secret!Secret!"),
        // Valid base64, too short a key.
        ("whsec_c2VjcmV0c2VjcmV0".into(), "c2VjcmV0c2VjcmV0"),
        ("whsk_c2VjcmV0c2VjcmV0".into(), "c2VjcmV0c2VjcmV0"),
        ("whsk_Secret*Secret*Secret".into(), "Secret*Secret"),
    ];
    for (secret, fragment) in &cases {
        let err = SigningKey::parse(secret).expect_err(secret);
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(fragment), "{shown}");
        }
    }
    for key in [
        "whpk_Secret!Secret!Secret!",
        "whsk_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ] {
        let err = VerifyingKey::parse(key).expect_err(key);
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(&key[5..]), "{shown}");
        }
    }
    assert!(matches!(
        SigningKey::parse("whpk_AAAA"),
        Err(SignatureError::PublicKeyCannotSign)
    ));
    assert!(matches!(
        VerifyingKey::parse("whsk_AAAA"),
        Err(SignatureError::SecretKeyForVerifying)
    ));
    assert!(matches!(
        SigningKey::parse("whsec_c2VjcmV0c2VjcmV0"),
        Err(SignatureError::KeyLength { len: 12, .. })
    ));
}

#[test]
fn debug_does_not_show_the_key() {
    let hmac = signing(VECTOR_SECRET);
    assert_eq!(format!("{hmac:?}"), "SigningKey::Hmac(..)");
    let (sk, _) = generate_asymmetric().expect("rng");
    let ed = signing(&sk);
    let shown = format!("{ed:?} {:#?}", [&ed, &hmac]);
    assert!(shown.starts_with("SigningKey::Ed25519(..)"), "{shown}");
    for secret in [VECTOR_SECRET, sk.as_str()] {
        let b64 = &secret[secret.find('_').map_or(0, |i| i + 1)..];
        assert!(!shown.contains(b64), "{shown}");
        let raw = BASE64.decode(b64).expect("own base64");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex), "{shown}");
        assert!(!shown.contains(&format!("{raw:?}")), "{shown}");
    }
    let whsec = format!("{:?}", verifying(VECTOR_SECRET));
    assert!(!whsec.contains(&VECTOR_SECRET[6..]), "{whsec}");
}

#[test]
fn generated_secrets_have_the_documented_shape() {
    let a = generate_symmetric().expect("rng");
    let b = generate_symmetric().expect("rng");
    assert_ne!(a, b);
    let raw = BASE64.decode(&a["whsec_".len()..]).expect("base64");
    assert_eq!(raw.len(), 32);
    let (sk, pk) = generate_asymmetric().expect("rng");
    assert_eq!(BASE64.decode(&sk["whsk_".len()..]).expect("b64").len(), 32);
    assert_eq!(BASE64.decode(&pk["whpk_".len()..]).expect("b64").len(), 32);
    assert!(matches!(verifying(&pk), VerifyingKey::Ed25519(_)));
}
