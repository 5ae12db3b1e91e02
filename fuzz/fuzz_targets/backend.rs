//! Backend (server → pgferry) messages: the typed views of what servers send, and a whole
//! server connection fed by a fake server over loopback TCP. pgferry logs in (no password,
//! cleartext, md5, or SCRAM from keys learned at a client login — chosen by the first input
//! byte) and runs a hidden query; whatever bytes the
//! "server" sends, pgferry must end with a value or an error — no panic, no hang, no allocation
//! beyond max_packet_size.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgferry::auth::{scram_keys_from_password, LearnedCredentials, ScramSecret, ServerCredentials};
use pgferry::config::{AuthType, Config, Database};
use pgferry::pool::{Pool, PoolInit};
use pgferry::protocol::{split_frame, views, Frame, Split};
use pgferry::server::{ServerError, ServerPassword};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const MAX_PACKET: usize = 1 << 16;

struct Fake {
    rt: Runtime,
    listener: TcpListener,
    /// One pool per password kind, all pointing at `listener`.
    pools: Vec<Arc<Pool>>,
}

fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut config = Config::default();
        config.pgferry.auth_type = AuthType::Trust;
        config.pgferry.metrics_addr = String::new();
        config.pgferry.server_connect_timeout = 2.0;
        config.pgferry.max_packet_size = MAX_PACKET as u32;
        config.inline_users.insert("app".into(), "pw".into());
        config.databases.insert(
            "shop".into(),
            Database {
                host: "127.0.0.1".into(),
                port,
                ..Database::default()
            },
        );
        let app = pgferry::app::App::new(config).expect("app");
        let base = rt
            .block_on(async { app.pool("shop", "app") })
            .expect("pool");
        let learned = LearnedCredentials::default();
        let secret = ScramSecret::from_password("pw");
        learned.set(ServerCredentials::Scram(
            scram_keys_from_password(&secret, b"pw").expect("keys"),
        ));
        let pools = [
            ServerPassword::None,
            ServerPassword::Plain("pw".into()),
            ServerPassword::Md5(postgres_protocol::password::md5(b"pw", "app")),
            ServerPassword::Learned(Arc::new(learned)),
        ]
        .into_iter()
        .map(|password| {
            let mut target = (*base.target()).clone();
            target.password = password;
            Pool::new(PoolInit {
                database: "shop".into(),
                user: "app".into(),
                target,
                settings: (*base.settings()).clone(),
                control: base.control.clone(),
                observer: Default::default(),
                db_cap: app.caps.db("shop", 0),
                user_cap: app.caps.user("app", 0),
                hosts: app.hosts.clone(),
            })
        })
        .collect();
        Fake {
            rt,
            listener,
            pools,
        }
    })
}

/// Every view pgferry applies to server messages, on every frame of `data`.
fn views_of(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Split::Frame(f)) = split_frame(&mut buf, MAX_PACKET) {
        let body = f.body();
        let _ = views::ready_status(f.body());
        let _ = views::command_tag(body);
        let _ = views::parameter_status(body);
        let _ = views::backend_key(body);
        for code in [b'C', b'M', b'S', b'V'] {
            let _ = views::error_field(body, code);
        }
        let raw: Bytes = f.raw().clone();
        let _ = pgferry::server::error_message(&raw);
        let _ = ServerError::Server(raw).is_transient();
        let _ = Frame::from_raw(f.raw().clone()).tag();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    views_of(stream);
    let f = fake();
    let pool = f.pools[usize::from(mode) % f.pools.len()].clone();
    let stream = stream.to_vec();
    f.rt.block_on(async {
        let server = async {
            let Ok((mut s, _)) = f.listener.accept().await else {
                return;
            };
            // Take the startup packet (and whatever else comes) without looking at it.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_millis(20), s.read(&mut sink)).await;
            let _ = s.write_all(&stream).await;
            let _ = s.shutdown().await;
            // Drain what pgferry still sends until it closes.
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let client = async {
            if let Ok(mut c) = pool.checkout_once().await {
                let conn = c.conn();
                let _ = conn.is_alive_idle();
                let _ = conn.param("timezone");
                let _ = conn.hidden_query("SELECT 1").await;
            }
        };
        let both = async { tokio::join!(server, client) };
        // The server side always closes, so this never takes long; a hang is a bug.
        if tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .is_err()
        {
            panic!("pgferry hung on a server connection");
        }
    });
});
