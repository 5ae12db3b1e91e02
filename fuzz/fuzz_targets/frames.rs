//! Frontend/backend framing and the typed views pgferry decodes: any byte stream must yield
//! frames or an error, never a panic or an allocation beyond the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgferry::protocol::{split_frame, views, Split};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Split::Frame(f)) = split_frame(&mut buf, 1 << 16) {
        let body = f.body();
        let _ = views::ParseView::new(body);
        let _ = views::BindView::new(body);
        let _ = views::TargetView::new(body);
        let _ = views::query_text(body);
        let _ = views::ready_status(f.body());
        let _ = views::parameter_status(body);
        let _ = views::backend_key(body);
        let _ = views::error_field(body, b'C');
        if let Ok(p) = views::ParseView::new(body) {
            let _ = views::rewrite_parse(&p, b"pgf_0");
        }
    }
});
