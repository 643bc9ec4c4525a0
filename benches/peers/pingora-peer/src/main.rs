//! `pingora-peer LISTEN BACKEND`: proxies every request to BACKEND over pooled HTTP/1.1 keep-alive,
//! one worker thread, HTTP/1.1 and h2c downstream. Nothing else: the peer Remora is measured against.
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct Peer {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Peer {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.backend.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora-peer LISTEN BACKEND");
        std::process::exit(2);
    };
    let conf = ServerConf { threads: 1, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Peer { backend });
    if let Some(app) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
