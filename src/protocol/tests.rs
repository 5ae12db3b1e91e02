use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn splits_whole_frames_and_keeps_the_rest() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&msg(b'Q', b"select 1\0"));
    buf.extend_from_slice(&msg(b'S', b"")[..3]);
    let Split::Frame(f) = split_frame(&mut buf, 1 << 20).unwrap() else {
        panic!("expected a frame")
    };
    assert_eq!(f.tag(), b'Q');
    assert_eq!(f.body(), b"select 1\0");
    assert_eq!(
        split_frame(&mut buf, 1 << 20).unwrap(),
        Split::Incomplete { missing: 2 }
    );
}

#[test]
fn rejects_bad_and_oversized_lengths_before_allocating() {
    for len in [0i32, 3, -1, i32::MIN] {
        let mut buf = BytesMut::from(&[b'Q'][..]);
        buf.extend_from_slice(&len.to_be_bytes());
        assert!(matches!(
            split_frame(&mut buf, 1 << 20),
            Err(FrameError::BadLength(_))
        ));
    }
    let mut buf = BytesMut::from(&[b'Q'][..]);
    buf.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        split_frame(&mut buf, 1 << 20),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn incomplete_reports_what_is_missing() {
    let mut buf = BytesMut::from(&msg(b'Q', b"select 1\0")[..7]);
    assert_eq!(
        split_frame(&mut buf, 1 << 20).unwrap(),
        Split::Incomplete { missing: 7 }
    );
}

#[test]
fn parse_complete_constant_is_the_message() {
    assert_eq!(build::PARSE_COMPLETE, msg(b'1', b"").as_slice());
}
