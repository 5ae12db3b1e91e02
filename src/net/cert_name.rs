//! The subject common name (CN) of an X.509 certificate, for `auth_type = "cert"`. A minimal,
//! bounds-checked DER walk: the certificate has already been verified by rustls, so all that
//! is needed is to find the subject and read its CN attribute.

/// DER tags used on the way to the subject's CN.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const EXPLICIT_VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The first CN of the certificate's subject, as PostgreSQL takes it. `None` when the subject
/// has no CN, the value is not a text string, or it contains a NUL (which could truncate it
/// somewhere else and make two names look equal).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if tbs.first() == Some(&EXPLICIT_VERSION) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity; then the subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (mut rdns, _) = expect(rest, SEQUENCE)?;
    while !rdns.is_empty() {
        let (set, after) = expect(rdns, SET)?;
        rdns = after;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, after) = expect(attrs, SEQUENCE)?;
            attrs = after;
            let (oid, value) = expect(attr, OID)?;
            if oid == CN_OID {
                let (tag, body, _) = tlv(value)?;
                return decode_string(tag, body).filter(|s| !s.contains('\0'));
            }
        }
    }
    None
}

/// One DER element: (tag, contents, what follows). Only definite lengths up to 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest.get(n..)?)
    };
    let body = rest.get(..len)?;
    Some((tag, body, rest.get(len..)?))
}

/// An element that must carry `tag`: (contents, what follows).
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (t, body, rest) if t == tag => Some((body, rest)),
        _ => None,
    }
}

fn decode_string(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString
        0x0c | 0x13 | 0x16 | 0x1a => std::str::from_utf8(body).ok().map(str::to_owned),
        // TeletexString: treated as Latin-1, as OpenSSL prints it.
        0x14 => Some(body.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e if body.len() % 2 == 0 => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::common_name;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert_with(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn finds_the_cn_among_other_attributes() {
        let der = cert_with(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("DE".try_into().unwrap()),
            ),
            (DnType::OrganizationName, DnValue::Utf8String("Acme".into())),
            (DnType::CommonName, DnValue::Utf8String("app".into())),
        ]);
        assert_eq!(common_name(&der).as_deref(), Some("app"));
    }

    #[test]
    fn printable_and_bmp_strings_decode() {
        let der = cert_with(&[(
            DnType::CommonName,
            DnValue::PrintableString("report user".try_into().unwrap()),
        )]);
        assert_eq!(common_name(&der).as_deref(), Some("report user"));
        let der = cert_with(&[(
            DnType::CommonName,
            DnValue::BmpString("jürgen".try_into().unwrap()),
        )]);
        assert_eq!(common_name(&der).as_deref(), Some("jürgen"));
    }

    #[test]
    fn no_cn_and_garbage_give_none() {
        let der = cert_with(&[(DnType::OrganizationName, DnValue::Utf8String("x".into()))]);
        assert_eq!(common_name(&der), None);
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let der = cert_with(&[(DnType::CommonName, DnValue::Utf8String("app".into()))]);
        for cut in 0..der.len() {
            // Truncated input never panics; it may still find the CN if it lies before the cut.
            let _ = common_name(&der[..cut]);
        }
    }

    #[test]
    fn embedded_nul_is_refused() {
        let der = cert_with(&[(DnType::CommonName, DnValue::Utf8String("app\0evil".into()))]);
        assert_eq!(common_name(&der), None);
    }
}
