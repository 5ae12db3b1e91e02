//! The untagged packets a client may send first: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage. Parsing is bounded (PostgreSQL's own 10,000-byte startup limit) and total:
//! any byte sequence yields a value or an error, never a panic.

use super::FrameError;

/// PostgreSQL refuses startup packets longer than this (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A parsed first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

/// A StartupMessage: protocol version and the parameters, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a startup parameter, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Validates the 4-byte length that starts every untagged packet.
pub fn check_startup_len(len_word: [u8; 4]) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(len_word);
    if len < 8 {
        return Err(FrameError::BadLength(i64::from(len)));
    }
    let len = usize::try_from(len).map_err(|_| FrameError::BadLength(i64::from(len)))?;
    if len > MAX_STARTUP_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(len)
}

/// Parses the packet body that follows the length word.
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, FrameError> {
    let code = read_u32(body, 0).ok_or(FrameError::Malformed("startup"))?;
    match code {
        SSL_REQUEST if body.len() == 4 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if body.len() == 4 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            // Protocol 3.0 keys are 4 bytes; 3.2 allows longer ones, which pgferry never issues.
            let pid = read_u32(body, 4).ok_or(FrameError::Malformed("cancel request"))?;
            let secret = read_u32(body, 8).ok_or(FrameError::Malformed("cancel request"))?;
            Ok(StartupPacket::Cancel {
                pid: pid as i32,
                secret: secret as i32,
            })
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(FrameError::Malformed("startup")),
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            let params = parse_params(&body[4..])?;
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
            }))
        }
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// `name\0value\0 ... \0`: a list of NUL-terminated pairs closed by an empty name.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut out = Vec::new();
    loop {
        let (name, after) = split_cstr(rest).ok_or(FrameError::Malformed("startup"))?;
        if name.is_empty() {
            if after.is_empty() {
                return Ok(out);
            }
            return Err(FrameError::Malformed("startup"));
        }
        let (value, after) = split_cstr(after).ok_or(FrameError::Malformed("startup"))?;
        let name = std::str::from_utf8(name).map_err(|_| FrameError::Malformed("startup"))?;
        let value = std::str::from_utf8(value).map_err(|_| FrameError::Malformed("startup"))?;
        out.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((&b[..nul], &b[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)], version: u32) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_startup_params_in_order() {
        let b = startup(&[("user", "app"), ("database", "shop")], 196_608);
        let StartupPacket::Startup(m) = parse_startup(&b).unwrap() else {
            panic!()
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.param("user"), Some("app"));
        assert_eq!(m.param("database"), Some("shop"));
    }

    #[test]
    fn recognises_special_requests() {
        assert_eq!(
            parse_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse_startup(&c).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: -9 }
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert!(parse_startup(&[0, 3]).is_err());
        let mut b = startup(&[("user", "app")], 196_608);
        b.pop();
        b.pop();
        assert!(parse_startup(&b).is_err());
        assert!(check_startup_len(3i32.to_be_bytes()).is_err());
        assert!(check_startup_len(i32::MAX.to_be_bytes()).is_err());
        let mut bad = 196_608u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"user\0\xff\xfe\0\0");
        assert!(parse_startup(&bad).is_err());
    }
}
