//! The few DER walks this module needs: a certificate's issuer, subject, public key and SANs.
//!
//! Deliberately small and strict: definite lengths only, low tag numbers only, lengths bounds-checked
//! against the input, never panics on any input (a property test feeds it garbage).

use std::net::IpAddr;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const INTEGER: u8 = 0x02;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
const ISSUER_UID: u8 = 0x81;
const SUBJECT_UID: u8 = 0x82;
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const GN_DNS: u8 = 0x82;
const GN_URI: u8 = 0x86;
const GN_IP: u8 = 0x87;

/// What [`parse_certificate`] extracts.
#[derive(Debug, Default)]
pub(super) struct CertInfo {
    /// The issuer Name, as encoded (tag and length included).
    pub(super) issuer: Vec<u8>,
    /// The subject Name, as encoded.
    pub(super) subject: Vec<u8>,
    /// The SubjectPublicKeyInfo, as encoded.
    pub(super) spki: Vec<u8>,
    /// The subject's first common name, if it is a UTF8String or PrintableString.
    pub(super) common_name: Option<String>,
    pub(super) uris: Vec<String>,
    pub(super) dns_names: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    /// The end of the validity period (`notAfter`), in seconds since the Unix epoch; `None` when
    /// its time does not parse (the TLS layer, not this, decides whether the certificate is valid).
    pub(super) not_after: Option<i64>,
}

#[derive(Debug)]
pub(super) struct DerError(&'static str);

impl std::fmt::Display for DerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    raw: &'a [u8],
}

fn next<'a>(input: &mut &'a [u8]) -> Result<Tlv<'a>, DerError> {
    let data = *input;
    let (&tag, rest) = data.split_first().ok_or(DerError("truncated: expected a tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("high tag numbers are not used in certificates"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated: expected a length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(DerError("indefinite length is not DER"));
        }
        if n > 4 || rest.len() < n {
            return Err(DerError("length out of range"));
        }
        let len = rest[..n].iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(DerError("truncated: the length exceeds the data"));
    }
    let header = data.len() - rest.len();
    let tlv = Tlv { tag, content: &rest[..len], raw: &data[..header + len] };
    *input = &rest[len..];
    Ok(tlv)
}

fn expect<'a>(input: &mut &'a [u8], tag: u8, what: &'static str) -> Result<Tlv<'a>, DerError> {
    let tlv = next(input)?;
    if tlv.tag != tag {
        return Err(DerError(what));
    }
    Ok(tlv)
}

const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notAfter` of a Validity (`SEQUENCE { notBefore Time, notAfter Time }`), as Unix seconds.
/// Times are `YYMMDDHHMMSSZ` (UTCTime; years 50–99 are 19xx) or `YYYYMMDDHHMMSSZ` (GeneralizedTime),
/// as RFC 5280 §4.1.2.5 requires them in certificates.
fn not_after(validity: &[u8]) -> Option<i64> {
    let mut input = validity;
    next(&mut input).ok()?;
    let time = next(&mut input).ok()?;
    let text = std::str::from_utf8(time.content).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| digits.get(range)?.parse::<i64>().ok();
    let (year, rest) = match (time.tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, minute, second) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Walks an X.509 certificate (RFC 5280 §4.1) down to the fields [`CertInfo`] holds.
pub(super) fn parse_certificate(der: &[u8]) -> Result<CertInfo, DerError> {
    let mut input = der;
    let certificate = expect(&mut input, SEQUENCE, "not a certificate (expected a SEQUENCE)")?;
    if !input.is_empty() {
        return Err(DerError("trailing data after the certificate"));
    }
    let mut body = certificate.content;
    let tbs = expect(&mut body, SEQUENCE, "expected tbsCertificate")?;
    let mut tbs = tbs.content;
    if tbs.first() == Some(&VERSION) {
        next(&mut tbs)?;
    }
    expect(&mut tbs, INTEGER, "expected serialNumber")?;
    expect(&mut tbs, SEQUENCE, "expected signature algorithm")?;
    let issuer = expect(&mut tbs, SEQUENCE, "expected issuer")?;
    let validity = expect(&mut tbs, SEQUENCE, "expected validity")?;
    let subject = expect(&mut tbs, SEQUENCE, "expected subject")?;
    let spki = expect(&mut tbs, SEQUENCE, "expected subjectPublicKeyInfo")?;
    let mut info = CertInfo {
        issuer: issuer.raw.to_vec(),
        subject: subject.raw.to_vec(),
        spki: spki.raw.to_vec(),
        // Only used to rebuild our own CA; a subject it cannot read just has no common name.
        common_name: common_name(subject.content).unwrap_or(None),
        not_after: not_after(validity.content),
        ..CertInfo::default()
    };
    let mut seen_san = false;
    while !tbs.is_empty() {
        let field = next(&mut tbs)?;
        match field.tag {
            ISSUER_UID | SUBJECT_UID => {}
            EXTENSIONS => {
                let mut wrapper = field.content;
                let extensions = expect(&mut wrapper, SEQUENCE, "expected Extensions")?;
                let mut extensions = extensions.content;
                while !extensions.is_empty() {
                    let extension = expect(&mut extensions, SEQUENCE, "expected Extension")?;
                    let mut extension = extension.content;
                    let oid = expect(&mut extension, OID, "expected extnID")?;
                    if extension.first() == Some(&BOOLEAN) {
                        next(&mut extension)?;
                    }
                    let value = expect(&mut extension, OCTET_STRING, "expected extnValue")?;
                    if oid.content == SUBJECT_ALT_NAME {
                        if seen_san {
                            return Err(DerError("duplicate subjectAltName extension"));
                        }
                        seen_san = true;
                        general_names(value.content, &mut info)?;
                    }
                }
            }
            _ => return Err(DerError("unexpected field in tbsCertificate")),
        }
    }
    Ok(info)
}

/// The first CN in a Name's RDNSequence (SEQUENCE OF SET OF SEQUENCE { OID, value }).
fn common_name(mut rdns: &[u8]) -> Result<Option<String>, DerError> {
    while !rdns.is_empty() {
        let rdn = expect(&mut rdns, SET, "expected a RelativeDistinguishedName")?;
        let mut attributes = rdn.content;
        while !attributes.is_empty() {
            let attribute = expect(&mut attributes, SEQUENCE, "expected an AttributeTypeAndValue")?;
            let mut attribute = attribute.content;
            let oid = expect(&mut attribute, OID, "expected an attribute type")?;
            let value = next(&mut attribute)?;
            if oid.content == COMMON_NAME && matches!(value.tag, UTF8_STRING | PRINTABLE_STRING) {
                let name = std::str::from_utf8(value.content).map_err(|_| DerError("a common name is not UTF-8"))?;
                return Ok(Some(name.to_string()));
            }
        }
    }
    Ok(None)
}

fn general_names(value: &[u8], info: &mut CertInfo) -> Result<(), DerError> {
    let mut input = value;
    let names = expect(&mut input, SEQUENCE, "expected GeneralNames")?;
    let mut names = names.content;
    while !names.is_empty() {
        let name = next(&mut names)?;
        let ascii = || {
            std::str::from_utf8(name.content)
                .ok()
                .filter(|s| s.is_ascii())
                .map(str::to_string)
                .ok_or(DerError("a SAN string is not ASCII"))
        };
        match name.tag {
            GN_URI => info.uris.push(ascii()?),
            GN_DNS => info.dns_names.push(ascii()?),
            GN_IP => match name.content.len() {
                4 => info.ips.push(IpAddr::from(<[u8; 4]>::try_from(name.content).expect("length checked"))),
                16 => info.ips.push(IpAddr::from(<[u8; 16]>::try_from(name.content).expect("length checked"))),
                _ => return Err(DerError("an IP address SAN is neither 4 nor 16 bytes")),
            },
            _ => {}
        }
    }
    Ok(())
}
