//! The data plane end to end, in real network namespaces with real processes: a `postern serve`
//! portal (SQLite), a `postern-gateway` in a gateway namespace, `postern-client`s in their own
//! namespaces, and a resource namespace with a TCP and a UDP echo server.
//!
//! ```text
//!  client ns i (10.1.i.1) ──veth── (10.1.i.2) gateway ns (10.2.0.1) ──veth── (10.2.0.5) resource ns
//!                                   portal relay :8080, WireGuard :51820 on 10.1.0.2
//! ```
//!
//! The portal runs in the test's own namespace; a relay thread listening inside the gateway
//! namespace forwards to it, so clients and the gateway reach it at 10.1.0.2:8080 /
//! 127.0.0.1:8080. The resource namespace has no route to the clients: replies only work
//! through the gateway's source NAT. The echo servers and the probes are sockets of this test
//! process, created by threads that entered the right namespace (`setns`).
//!
//! The `cluster_` tests run three portal nodes on one fresh PostgreSQL database instead, relayed
//! at ports 8080, 8081 and 8082; the gateway's `--api-url` lists node 2 first.
//!
//! Needs root (namespaces, TUN, nftables): without it the tests print SKIPPED and pass, except
//! under CI=true where they fail. Namespaces and processes are removed by guards, also when a
//! test fails.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{string, Portal};
use e2e::{sibling_binary, Api, Backend, Database};
use serde_json::{json, Value};

/// Where the gateway serves its metrics, in its namespace.
const GATEWAY_METRICS: &str = "10.1.1.2:9465";
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const BLOCKED_PORT: u16 = 7002;
const RESOURCE: &str = "10.2.0.5";
const RESOURCE_V6: &str = "fd00:2::5";
const RESOURCE_V6_CIDR: &str = "fd00:2::5/64";
/// An HTTP server on every address of the resource namespace, answering `hello from ADDR`.
const HTTP_PORT: u16 = 8000;
/// The resource network's DNS server (dnsmasq), which the gateway uses.
const SITE_DNS: &str = "10.2.0.5";
/// The client host's own resolver (dnsmasq in client namespace 1): it knows `outside.test`,
/// none of the resource names.
const HOST_DNS: &str = "10.1.1.1";
/// Deadline for processes to come up and connect (debug builds on a busy machine).
const START: Duration = Duration::from_secs(30);
/// The issue's bound on withdrawal.
const CUT_BOUND: Duration = Duration::from_secs(1);

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `false` (after a loud notice) when this machine cannot run the tests; fails under CI.
fn can_run() -> bool {
    can_run_with(&[("ip", "-V", "iproute2"), ("nft", "-V", "nftables")])
}

/// The same for the tests that also run dnsmasq and curl.
fn can_run_dns() -> bool {
    can_run_with(&[
        ("ip", "-V", "iproute2"),
        ("nft", "-V", "nftables"),
        ("dnsmasq", "--version", "dnsmasq-base"),
        ("curl", "--version", "curl"),
    ])
}

/// `tools`: each program, the flag that makes it print its version, its Debian package.
fn can_run_with(tools: &[(&str, &str, &str)]) -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some(
            "not running as root (network namespaces, TUN devices and nftables need it)"
                .to_string(),
        )
    } else {
        tools
            .iter()
            .find(|(tool, version, _)| {
                Command::new(tool)
                    .arg(version)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_err()
            })
            .map(|(tool, _, package)| {
                format!("`{tool}` is not installed (apt-get install {package})")
            })
    };
    let Some(why) = missing else { return true };
    assert!(
        !under_ci(),
        "the data-plane tests must run under CI=true, but {why}"
    );
    eprintln!(
        "\n********************************************************************************\n\
         SKIPPED (data-plane end-to-end tests): {why}\n\
         ********************************************************************************\n"
    );
    false
}

#[track_caller]
fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Network namespaces and veth pairs, deleted when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`: sockets it creates live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        use std::os::fd::AsRawFd;
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A process in a namespace, killed and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    state_dir: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {}:\n{}", self.name, self.log());
        }
    }
}

struct World {
    // Dropped first to last: processes, then the portals, then namespaces.
    procs: Vec<Proc>,
    portal: Option<Portal>,
    portal_addr: String,
    /// With several portal nodes (PostgreSQL): the nodes after the first, reached in the
    /// gateway namespace on ports 8081, 8082, …
    other_nodes: Vec<Option<Portal>>,
    /// Each node's API, the first node's first.
    node_apis: Vec<Api>,
    database: Option<Database>,
    data_dir: tempfile::TempDir,
    api: Api,
    group_id: String,
    actor_id: String,
    token_id: String,
    client_token: String,
    outsider_token: String,
    policy_id: String,
    _ns: Namespaces,
    prefix: String,
    relay_stop: Arc<AtomicBool>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.relay_stop.store(true, Ordering::SeqCst);
        self.procs.clear();
        self.portal.take();
        self.other_nodes.clear();
    }
}

impl World {
    /// Namespaces for `clients` clients, a gateway and a resource; a portal with a group
    /// `fleet`, a service account `runner` in it, an `outsider` service account in no group, a
    /// site with a running gateway, and a resource 10.2.0.0/24 (tcp 7000, udp 7001, icmp)
    /// granted to `fleet`.
    fn new(clients: usize) -> World {
        match World::with_nodes(clients, 1) {
            Some(world) => world,
            None => unreachable!("one node runs on SQLite"),
        }
    }

    /// The same with `nodes` portal nodes: one runs on SQLite, several on one fresh PostgreSQL
    /// database (`None` when PostgreSQL is not configured outside CI). The gateway tries node
    /// 2 first (`--api-url` lists 8081, 8082, …, 8080).
    fn with_nodes(clients: usize, nodes: usize) -> Option<World> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "pd{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let gw = format!("{prefix}g");
        let res = format!("{prefix}r");
        let mut names = vec![gw.clone(), res.clone()];
        names.extend((1..=clients).map(|i| format!("{prefix}c{i}")));
        let ns = Namespaces {
            names: names.clone(),
        };
        for name in &names {
            sh("ip", &["netns", "add", name]);
            sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        }
        let veth = |a_ns: &str, a: &str, a_addr: &str, b_ns: &str, b: &str, b_addr: &str| {
            sh("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
            sh("ip", &["link", "set", a, "netns", a_ns]);
            sh("ip", &["link", "set", b, "netns", b_ns]);
            sh("ip", &["-n", a_ns, "addr", "add", a_addr, "dev", a]);
            sh("ip", &["-n", b_ns, "addr", "add", b_addr, "dev", b]);
            sh("ip", &["-n", a_ns, "link", "set", a, "up"]);
            sh("ip", &["-n", b_ns, "link", "set", b, "up"]);
        };
        veth(
            &gw,
            &format!("{prefix}gr"),
            "10.2.0.1/24",
            &res,
            &format!("{prefix}rg"),
            "10.2.0.5/24",
        );
        // A second IPv4 address for a DNS record to move to, and the IPv6 resource network.
        let rg = format!("{prefix}rg");
        let gr = format!("{prefix}gr");
        sh(
            "ip",
            &["-n", &res, "addr", "add", "10.2.0.6/24", "dev", &rg],
        );
        // "The Internet": a network no resource covers, behind the gateway.
        sh(
            "ip",
            &["-n", &res, "addr", "add", "10.3.0.5/24", "dev", &rg],
        );
        sh("ip", &["-n", &gw, "addr", "add", "10.3.0.1/24", "dev", &gr]);
        sh(
            "ip",
            &[
                "-n",
                &res,
                "addr",
                "add",
                RESOURCE_V6_CIDR,
                "dev",
                &rg,
                "nodad",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &gw,
                "addr",
                "add",
                "fd00:2::1/64",
                "dev",
                &gr,
                "nodad",
            ],
        );
        for i in 1..=clients {
            let client = format!("{prefix}c{i}");
            veth(
                &client,
                &format!("{prefix}c{i}g"),
                &format!("10.1.{i}.1/24"),
                &gw,
                &format!("{prefix}g{i}c"),
                &format!("10.1.{i}.2/24"),
            );
            if i != 1 {
                // Only the gateway's public address, no default route: without a tunnel a client
                // reaches nothing of the resource network.
                sh(
                    "ip",
                    &[
                        "-n",
                        &client,
                        "route",
                        "add",
                        "10.1.1.2/32",
                        "via",
                        &format!("10.1.{i}.2"),
                    ],
                );
            }
        }
        echo_servers(&res);
        http_server(&res);

        let data_dir = tempfile::tempdir().expect("temp dir");
        let dir = data_dir.path().to_str().expect("utf-8").to_string();
        let database = match nodes {
            1 => None,
            _ => Some(Database::create(Backend::Postgres)?),
        };
        let db_args: Vec<String> = match &database {
            Some(database) => database.args().iter().map(|a| a.to_string()).collect(),
            None => vec!["--data-dir".into(), dir.clone()],
        };
        let db_args: Vec<&str> = db_args.iter().map(String::as_str).collect();
        let api_token = match &database {
            Some(database) => database.api_token(),
            None => common::postern(
                &["api-token", "create", "--name", "e2e", "--data-dir", &dir],
                &[],
            )
            .ok()
            .stdout
            .trim()
            .to_string(),
        };
        let relay_stop = Arc::new(AtomicBool::new(false));
        let mut portals: Vec<Portal> = (0..nodes).map(|_| Portal::start(&db_args)).collect();
        for (n, node) in portals.iter().enumerate() {
            let addr = node.url.trim_start_matches("http://").to_string();
            relay(&gw, 8080 + n as u16, addr, relay_stop.clone());
        }
        let node_apis: Vec<Api> = portals
            .iter()
            .map(|node| Api::new(&node.url, &api_token))
            .collect();
        let portal = portals.remove(0);
        let portal_addr = portal.url.trim_start_matches("http://").to_string();
        let other_nodes: Vec<Option<Portal>> = portals.into_iter().map(Some).collect();
        let api = Api::new(&portal.url, &api_token);

        let group_id = string(
            &api.post("/v1/groups", json!({"name": "fleet"}))["data"],
            "id",
        );
        let runner = api.post(
            "/v1/actors",
            json!({"type": "service_account", "name": "runner", "group_ids": [group_id]}),
        );
        let actor_id = string(&runner["data"], "id");
        let outsider = api.post(
            "/v1/actors",
            json!({"type": "service_account", "name": "outsider"}),
        );
        let site_id = string(&api.post("/v1/sites", json!({"name": "dc"}))["data"], "id");
        let gateway_token = string(
            &api.post(&format!("/v1/sites/{site_id}/gateway_tokens"), json!({}))["data"],
            "secret",
        );
        let resource = api.post(
            "/v1/resources",
            json!({"type": "cidr", "name": "lan", "address": "10.2.0.0/24", "site_id": site_id,
                   "filters": [{"protocol": "tcp", "ports": format!("{TCP_PORT},{HTTP_PORT}")},
                               {"protocol": "udp", "ports": UDP_PORT.to_string()},
                               {"protocol": "icmp"}]}),
        );
        let resource_id = string(&resource["data"], "id");
        let policy = api.post(
            "/v1/policies",
            json!({"group_id": group_id, "resource_id": resource_id}),
        );
        let mut world = World {
            procs: Vec::new(),
            portal: Some(portal),
            portal_addr,
            other_nodes,
            node_apis,
            database,
            data_dir,
            api,
            group_id,
            actor_id,
            token_id: string(&runner["token"], "id"),
            client_token: string(&runner["token"], "secret"),
            outsider_token: string(&outsider["token"], "secret"),
            policy_id: string(&policy["data"], "id"),
            _ns: ns,
            prefix,
            relay_stop,
        };
        let gateway_urls: Vec<String> = (1..nodes)
            .chain(std::iter::once(0))
            .map(|n| format!("http://127.0.0.1:{}", 8080 + n))
            .collect();
        let gateway_urls = gateway_urls.join(",");
        let gateway = world.spawn(
            "postern-gateway",
            &gw,
            "gateway",
            &gateway_token,
            &[
                "--api-url",
                &gateway_urls,
                "--listen",
                "10.1.1.2:51820",
                "--dns-server",
                SITE_DNS,
                "--metrics-listen",
                GATEWAY_METRICS,
            ],
        );
        world.procs.push(gateway);
        world.wait_status(0, "connected", |s| s["state"] == "connected");
        Some(world)
    }

    /// One client namespace with `runner-1` (the group's member) connected and its UDP echo
    /// through the tunnel working: the world, the client's index in `procs`, its namespace and
    /// a UDP socket in it.
    fn with_runner_reaching_the_resource() -> (World, usize, String, UdpSocket) {
        let mut w = World::new(1);
        let token = w.client_token.clone();
        let client = w.client(1, "runner-1", &token);
        let ns = w.client_ns(1);
        assert_reaches(&w, &ns);
        let udp = udp_socket(&ns);
        assert!(udp_echo(&udp, b"before", Duration::from_secs(1)));
        (w, client, ns, udp)
    }

    fn client_ns(&self, i: usize) -> String {
        format!("{}c{i}", self.prefix)
    }

    fn spawn(&self, program: &'static str, ns: &str, id: &str, token: &str, args: &[&str]) -> Proc {
        self.spawn_with(program, ns, id, Some(token), args)
    }

    /// A process given `POSTERN_TOKEN` when `env_token` is set (else its arguments name a
    /// token file).
    fn spawn_with(
        &self,
        program: &'static str,
        ns: &str,
        id: &str,
        env_token: Option<&str>,
        args: &[&str],
    ) -> Proc {
        let dir = self.data_dir.path().join(id);
        std::fs::create_dir_all(&dir).expect("dir");
        let state_dir = dir.join("state");
        let log = dir.join("log");
        let file = File::create(&log).expect("log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(sibling_binary(program))
            .args(["--id", id, "--name", id, "--state-dir"])
            .arg(&state_dir)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                "info,postern_client=debug,postern_gateway=debug",
            );
        if let Some(token) = env_token {
            command.env("POSTERN_TOKEN", token);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("{program}: {err}"));
        Proc {
            name: format!("{program} {id}"),
            child,
            log,
            state_dir,
        }
    }

    /// Starts a client in client namespace `i`, on the first portal node; returns its index in
    /// `procs`.
    fn client(&mut self, i: usize, id: &str, token: &str) -> usize {
        self.client_on(i, id, token, 1)
    }

    /// The same on portal node `node` (1 is the first). The system's DNS is left alone
    /// (`--dns-control disabled`): without a resolv.conf of its own, a namespace shares the
    /// host's.
    fn client_on(&mut self, i: usize, id: &str, token: &str, node: u16) -> usize {
        self.client_with(i, id, token, node, &["--dns-control", "disabled"])
    }

    /// A client with more arguments.
    fn client_with(&mut self, i: usize, id: &str, token: &str, node: u16, args: &[&str]) -> usize {
        self.client_given(i, id, Some(token), node, args)
    }

    /// A client given its token in `POSTERN_TOKEN`, or (`None`) by `--token-path` in `args`.
    fn client_given(
        &mut self,
        i: usize,
        id: &str,
        env_token: Option<&str>,
        node: u16,
        args: &[&str],
    ) -> usize {
        let ns = self.client_ns(i);
        let url = format!("http://10.1.1.2:{}", 8079 + node);
        let mut all = vec!["--api-url", &url, "--insecure"];
        all.extend_from_slice(args);
        let proc = self.spawn_with("postern-client", &ns, id, env_token, &all);
        self.procs.push(proc);
        let index = self.procs.len() - 1;
        self.wait_status(index, "connected with its addresses", |s| {
            s["state"] == "connected" && s["addresses"].is_object()
        });
        index
    }

    #[track_caller]
    fn wait_status(&mut self, index: usize, what: &str, ready: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + START;
        loop {
            if self.procs[index].status().is_some_and(|s| ready(&s)) {
                return;
            }
            let proc = &mut self.procs[index];
            if let Some(status) = proc.exited() {
                panic!("{} exited ({status}) before being {what}", proc.name);
            }
            assert!(Instant::now() < deadline, "{} never {what}", proc.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `HTTP/1.0 200` with `hello from ADDR to PEER` (the address the connection reached, and the
/// one it came from) to any request on port [`HTTP_PORT`] of every address of namespace `ns`,
/// IPv4 and IPv6.
fn http_server(ns: &str) {
    let listener = in_netns(ns, || {
        TcpListener::bind(("::", HTTP_PORT)).expect("http server")
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let local = stream
                    .local_addr()
                    .map(|a| a.ip().to_canonical().to_string())
                    .unwrap_or_default();
                let peer = stream
                    .peer_addr()
                    .map(|a| a.ip().to_canonical().to_string())
                    .unwrap_or_default();
                let _ = write!(
                    stream,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from {local} to {peer}\n"
                );
            });
        }
    });
}

/// TCP and UDP echo servers on every address of namespace `ns`, plus a TCP one on the port
/// the resource's filter does not allow.
fn echo_servers(ns: &str) {
    let (tcp, blocked, udp) = in_netns(ns, || {
        (
            TcpListener::bind(("::", TCP_PORT)).expect("tcp echo"),
            TcpListener::bind(("::", BLOCKED_PORT)).expect("blocked echo"),
            UdpSocket::bind(("::", UDP_PORT)).expect("udp echo"),
        )
    });
    for listener in [tcp, blocked] {
        serve_tcp_echo(listener);
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// Echoes what every connection to `listener` sends, on threads of its own.
fn serve_tcp_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream;
                let Ok(mut writer) = reader.try_clone() else {
                    return;
                };
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
}

/// Relays TCP connections to 0.0.0.0:`port` inside namespace `ns` to the portal at `to` (in
/// this process's namespace).
fn relay(ns: &str, port: u16, to: String, stop: Arc<AtomicBool>) {
    let listener = in_netns(ns, move || {
        TcpListener::bind(("0.0.0.0", port)).expect("relay listener")
    });
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(outbound) = TcpStream::connect(&to) else {
                continue;
            };
            for (mut from, mut into) in [
                (inbound.try_clone(), outbound.try_clone()),
                (outbound.try_clone(), inbound.try_clone()),
            ]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

/// One TCP echo round trip from namespace `ns` to the resource.
fn tcp_echo(ns: &str, port: u16, timeout: Duration) -> Result<(), String> {
    tcp_echo_at(ns, RESOURCE, port, timeout)
}

/// One TCP echo round trip from namespace `ns` to `host`.
fn tcp_echo_at(ns: &str, host: &'static str, port: u16, timeout: Duration) -> Result<(), String> {
    in_netns(ns, move || {
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"hello postern")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 13];
        stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&buf == b"hello postern")
            .then_some(())
            .ok_or_else(|| "wrong echo".to_string())
    })
}

/// A UDP socket in namespace `ns`, connected to the resource's UDP echo (which fails when the
/// namespace has no route to it).
fn try_udp_socket(ns: &str) -> std::io::Result<UdpSocket> {
    in_netns(ns, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect((RESOURCE, UDP_PORT))?;
        Ok(socket)
    })
}

#[track_caller]
fn udp_socket(ns: &str) -> UdpSocket {
    try_udp_socket(ns).unwrap_or_else(|err| panic!("UDP socket in {ns}: {err}"))
}

fn udp_echo(socket: &UdpSocket, payload: &[u8], timeout: Duration) -> bool {
    let _ = socket.set_read_timeout(Some(timeout));
    if socket.send(payload).is_err() {
        return false;
    }
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) if &buf[..n] == payload => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Retries the first TCP echo: the first packet asks for access, the handshake follows.
#[track_caller]
fn assert_reaches(world: &World, ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tcp_echo(ns, TCP_PORT, Duration::from_secs(2)) {
            Ok(()) => break,
            Err(err) if Instant::now() > deadline => {
                panic!(
                    "{ns} never reached {RESOURCE}:{TCP_PORT} over TCP: {err}\n{}",
                    logs(world)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let udp = udp_socket(ns);
    assert!(
        (0..10).any(|n| udp_echo(
            &udp,
            format!("udp {n}").as_bytes(),
            Duration::from_millis(500)
        )),
        "{ns} never got a UDP echo\n{}",
        logs(world)
    );
}

fn logs(world: &World) -> String {
    world
        .procs
        .iter()
        .map(|p| format!("--- {}:\n{}", p.name, p.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Probes UDP echo every 50 ms from `since` until it fails, then checks it stays cut for 2 s;
/// returns how long after `since` the first probe failed.
fn time_to_cut(udp: &UdpSocket, since: Instant) -> Duration {
    let mut n = 0u64;
    let cut_at = loop {
        n += 1;
        if !udp_echo(
            udp,
            format!("probe {n}").as_bytes(),
            Duration::from_millis(100),
        ) {
            break since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "traffic was never cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        n += 1;
        assert!(
            !udp_echo(
                udp,
                format!("probe {n}").as_bytes(),
                Duration::from_millis(100)
            ),
            "traffic came back after being cut"
        );
    }
    cut_at
}

#[test]
fn a_member_reaches_tcp_and_udp_but_not_a_filtered_port_and_an_outsider_reaches_nothing() {
    if !can_run() {
        return;
    }
    let mut w = World::new(2);
    let token = w.client_token.clone();
    let outsider = w.outsider_token.clone();
    w.client(1, "runner-1", &token);
    w.client(2, "outsider-1", &outsider);
    let (member_ns, outsider_ns) = (w.client_ns(1), w.client_ns(2));

    assert_reaches(&w, &member_ns);
    let blocked = tcp_echo(&member_ns, BLOCKED_PORT, Duration::from_secs(2));
    assert!(
        blocked.is_err(),
        "port {BLOCKED_PORT} is outside the filter but was reached"
    );
    assert!(
        tcp_echo(&outsider_ns, TCP_PORT, Duration::from_secs(2)).is_err(),
        "an actor outside the group reached the resource"
    );
    if let Ok(udp) = try_udp_socket(&outsider_ns) {
        assert!(!udp_echo(&udp, b"x", Duration::from_millis(500)));
    }

    // The gateway counted the filtered packets.
    w.wait_status(0, "counting filtered packets", |s| {
        s["dropped_packets"]["filtered"].as_u64().unwrap_or(0) > 0 || s["authorizations_count"] == 1
    });

    // Its metrics say the same, read as Prometheus reads them (published every 2 s).
    let gateway_ns = format!("{}g", w.prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = gateway_metrics(&gateway_ns);
        let filtered = metric(
            &scrape,
            "postern_gateway_drops_total",
            ("reason", "filtered"),
        );
        if filtered > 0.0 || Instant::now() >= deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for direction in ["from_clients", "to_clients"] {
        let packets = metric(
            &scrape,
            "postern_gateway_packets_total",
            ("direction", direction),
        );
        let bytes = metric(
            &scrape,
            "postern_gateway_bytes_total",
            ("direction", direction),
        );
        assert!(
            packets > 0.0 && bytes >= 20.0 * packets,
            "{direction}: {packets} packets, {bytes} bytes"
        );
    }
    assert!(
        metric(
            &scrape,
            "postern_gateway_drops_total",
            ("reason", "filtered")
        ) > 0.0
    );
    assert!(
        metric(
            &scrape,
            "postern_gateway_handshakes_total",
            ("outcome", "completed")
        ) >= 1.0
    );
    assert!(metric(&scrape, "postern_gateway_peers", ("", "")) >= 1.0);
    assert!(metric(&scrape, "postern_gateway_authorizations", ("", "")) >= 1.0);
}

/// The gateway's metrics endpoint, inside its namespace, parsed as the Prometheus text format.
fn gateway_metrics(ns: &str) -> prometheus_parse::Scrape {
    let text = in_netns(ns, || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(GATEWAY_METRICS).expect("the metrics port");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            .expect("a request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("a response");
        response
    });
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The sum of `name`'s samples with the label `(key, value)` (an empty key: any).
fn metric(scrape: &prometheus_parse::Scrape, name: &str, (key, value): (&str, &str)) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && (key.is_empty() || s.labels.get(key) == Some(value)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn revoking_the_token_cuts_traffic_within_1_s() {
    if !can_run() {
        return;
    }
    let (mut w, _, _, udp) = World::with_runner_reaching_the_resource();
    w.api
        .delete(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    let cut = time_to_cut(&udp, Instant::now());
    eprintln!("revoking the token cut the traffic after {cut:?}");
    assert!(
        cut <= CUT_BOUND,
        "traffic still flowed {cut:?} after the revocation"
    );
    w.wait_status(0, "without authorizations", |s| {
        s["authorizations_count"] == 0
    });
}

/// The report's first defect, as packets show it. The client is cut off from the portal (its
/// control connection dropped by nftables in its namespace), so it keeps running with its
/// tunnel and its grant. Its token is revoked: the gateway drops the grant and the client's
/// packets stop. The portal restarts and the gateway reconnects: before the fix, the gateway's
/// fresh `Init` carried the revoked grant again and the packets flowed once more.
#[test]
fn a_revoked_client_passes_no_packet_after_a_portal_restart() {
    if !can_run() {
        return;
    }
    let (mut w, client, ns, udp) = World::with_runner_reaching_the_resource();

    let rules = "table inet postern_test_partition {\n\
                   chain output { type filter hook output priority 0; tcp dport 8080 drop; }\n\
                   chain input { type filter hook input priority 0; tcp sport 8080 drop; }\n\
                 }\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft runs");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules written");
    assert!(
        nft.wait().expect("nft").success(),
        "the partition is set up"
    );
    assert!(
        udp_echo(&udp, b"partitioned", Duration::from_secs(1)),
        "the tunnel works without the control connection"
    );

    w.api
        .delete(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    let cut = time_to_cut(&udp, Instant::now());
    eprintln!("revoking the partitioned client's token cut its traffic after {cut:?}");
    w.wait_status(0, "without authorizations", |s| {
        s["authorizations_count"] == 0
    });
    assert!(
        w.procs[client].exited().is_none(),
        "the partitioned client does not know and keeps running"
    );

    let empty_inits = |w: &World| {
        w.procs[0]
            .log()
            .matches("session ready: 0 authorization(s)")
            .count()
    };
    let (sessions, empty_before) = (
        w.procs[0].log().matches("session ready").count(),
        empty_inits(&w),
    );
    let portal = w.portal.take().expect("portal");
    let data_dir = w.data_dir.path().to_str().expect("utf-8").to_string();
    w.portal = Some(portal.restart(&["--data-dir", &data_dir]));
    let deadline = Instant::now() + START;
    while w.procs[0].log().matches("session ready").count() <= sessions {
        assert!(
            Instant::now() < deadline,
            "the gateway never reconnected\n{}",
            logs(&w)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        empty_inits(&w),
        empty_before + 1,
        "the reconnected gateway got the revoked grant back\n{}",
        logs(&w)
    );
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        assert!(
            !udp_echo(
                &udp,
                format!("after restart {n}").as_bytes(),
                Duration::from_millis(100)
            ),
            "a packet of the revoked client passed after the restart\n{}",
            logs(&w)
        );
    }
    assert_eq!(
        w.procs[0].status().expect("status")["authorizations_count"],
        0
    );
}

#[test]
fn removing_the_policy_cuts_traffic_within_1_s_and_the_client_keeps_running() {
    if !can_run() {
        return;
    }
    let (mut w, client, ns, udp) = World::with_runner_reaching_the_resource();
    w.api.delete(&format!("/v1/policies/{}", w.policy_id));
    let cut = time_to_cut(&udp, Instant::now());
    eprintln!("removing the policy cut the traffic after {cut:?}");
    assert!(
        cut <= CUT_BOUND,
        "traffic still flowed {cut:?} after the policy was removed"
    );
    w.wait_status(0, "without authorizations", |s| {
        s["authorizations_count"] == 0
    });
    assert!(
        w.procs[client].exited().is_none(),
        "the client must keep running"
    );
    let routes = Command::new("ip")
        .args(["-n", &ns, "route", "show", "dev", "postern0"])
        .output()
        .expect("ip route");
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("10.2.0.0/24"),
        "the route to the resource must be removed"
    );
    let _ = &w.group_id;
}

#[test]
fn two_clients_sharing_one_token_both_work() {
    if !can_run() {
        return;
    }
    let mut w = World::new(2);
    let token = w.client_token.clone();
    w.client(1, "shared-1", &token);
    w.client(2, "shared-2", &token);
    let (a, b) = (w.client_ns(1), w.client_ns(2));
    assert_reaches(&w, &a);
    assert_reaches(&w, &b);
    assert!(tcp_echo(&a, TCP_PORT, Duration::from_secs(2)).is_ok());
}

#[test]
fn a_portal_restart_does_not_interrupt_an_open_tcp_transfer() {
    if !can_run() {
        return;
    }
    let mut w = World::new(1);
    let token = w.client_token.clone();
    w.client(1, "runner-1", &token);
    let ns = w.client_ns(1);
    assert_reaches(&w, &ns);
    let mut transfer = Transfer::start(&ns);
    transfer.read_for(Duration::from_secs(1));

    let portal = w.portal.take().expect("portal");
    assert_eq!(portal.terminate(), Some(0));
    transfer.read_for(Duration::from_secs(2));
    let args = [
        "serve",
        "--listen",
        &w.portal_addr,
        "--data-dir",
        w.data_dir.path().to_str().expect("utf-8"),
    ];
    w.portal = Some(Portal::try_start(&args).expect("the portal restarts"));
    w.wait_status(1, "reconnected", |s| s["state"] == "connected");
    transfer.read_for(Duration::from_secs(2));
    let total = transfer.finish();
    assert!(total > 100_000, "only {total} bytes went through");
}

/// A TCP echo through a client's tunnel that writes 100 kB/s until finished: it fails the
/// test if the connection stalls for 2 s or breaks.
struct Transfer {
    stream: TcpStream,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<bool>,
    received: u64,
}

impl Transfer {
    fn start(ns: &str) -> Transfer {
        let stream = in_netns(ns, || {
            TcpStream::connect((RESOURCE, TCP_PORT)).expect("connect through the tunnel")
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut stream = stream.try_clone().expect("clone");
            let (sent, stop) = (sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let chunk = [7u8; 1000];
                while !stop.load(Ordering::SeqCst) {
                    if stream.write_all(&chunk).is_err() {
                        return false;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
                true
            })
        };
        Transfer {
            stream,
            sent,
            stop,
            writer,
            received: 0,
        }
    }

    /// Reads the echo for `limit`.
    fn read_for(&mut self, limit: Duration) {
        let mut buf = [0u8; 4096];
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let n = self
                .stream
                .read(&mut buf)
                .expect("the echo stalled or broke");
            assert!(n > 0, "the connection closed");
            self.received += n as u64;
        }
    }

    /// Stops writing, reads the rest of the echo and checks that every byte came back; returns
    /// how many went through.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        assert!(
            self.writer.join().expect("writer"),
            "writing through the tunnel failed"
        );
        let total = self.sent.load(Ordering::SeqCst);
        let mut buf = [0u8; 4096];
        while self.received < total {
            let n = self.stream.read(&mut buf).expect("the rest of the echo");
            assert!(n > 0);
            self.received += n as u64;
        }
        assert_eq!(self.received, total);
        total
    }
}

#[test]
fn a_rotation_moves_five_clients_to_the_successor_without_dropping_a_transfer() {
    if !can_run() {
        return;
    }
    let mut w = World::new(5);
    let token = w.client_token.clone();
    // Four clients read the token from a file, the fifth from POSTERN_TOKEN.
    let mut files = Vec::new();
    let mut clients = Vec::new();
    for i in 1..=4 {
        let file = w.data_dir.path().join(format!("token-{i}"));
        std::fs::write(&file, format!("{token}\n")).expect("token file");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let path = file.to_str().expect("utf-8").to_string();
        let id = format!("runner-{i}");
        let args = ["--dns-control", "disabled", "--token-path", &path];
        clients.push(w.client_given(i, &id, None, 1, &args));
        files.push(file);
    }
    clients.push(w.client(5, "runner-5", &token));
    for i in 1..=5 {
        assert_reaches(&w, &w.client_ns(i));
    }
    let mut transfer = Transfer::start(&w.client_ns(1));
    transfer.read_for(Duration::from_secs(1));

    let rotate = format!("/v1/actors/{}/tokens/{}/rotate", w.actor_id, w.token_id);
    let rotated_at = Instant::now();
    let rotation = w.api.post(&rotate, json!({"overlap": "10s"}))["data"].clone();
    let successor_id = string(&rotation["successor"], "id");
    let successor_secret = string(&rotation["successor"], "secret");
    let window_end: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotation["rotated"]["expires_at"].clone()).expect("expiry");

    for (n, &index) in clients.iter().enumerate() {
        w.wait_status(index, "moved to the successor", |s| {
            s["state"] == "connected"
                && s["token"]["id"] == successor_id.as_str()
                && s["token_rotation"]["token_id"] == successor_id.as_str()
        });
        let rotation = w.procs[index].status().expect("status")["token_rotation"].clone();
        if n < 4 {
            assert_eq!(rotation["persisted"], true, "{rotation}");
            let written = std::fs::read_to_string(&files[n]).expect("token file");
            assert_eq!(
                written.trim(),
                successor_secret,
                "the token file holds the successor"
            );
            let mode = std::fs::metadata(&files[n]).expect("meta").permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        } else {
            assert_eq!(rotation["persisted"], false, "{rotation}");
            let action = rotation["action_needed"].as_str().unwrap_or_default();
            assert!(action.contains("POSTERN_TOKEN"), "{action}");
            assert!(w.procs[index].log().contains("cannot be persisted"));
        }
        assert!(
            !w.procs[index].log().contains(&successor_secret),
            "the secret is never logged"
        );
    }
    // A figure for the record, not a bound: how long the fleet took to move.
    eprintln!(
        "five clients moved to the successor within {:.2} s of the rotation",
        rotated_at.elapsed().as_secs_f64()
    );
    transfer.read_for(Duration::from_secs(1));
    let moved = w
        .api
        .get(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    assert_eq!(moved["data"]["clients_moved"], 5, "{moved}");

    // Past the window the old token is refused; the moved clients keep their tunnels.
    while chrono::Utc::now() < window_end + chrono::Duration::seconds(1) {
        transfer.read_for(Duration::from_millis(500));
    }
    let mut late = w.spawn(
        "postern-client",
        &w.client_ns(5),
        "late",
        &token,
        &[
            "--api-url",
            "http://10.1.1.2:8080",
            "--insecure",
            "--no-tunnel",
        ],
    );
    let deadline = Instant::now() + START;
    let code = loop {
        if let Some(status) = late.exited() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the old token still connects");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(3), "{}", late.log());
    for i in 1..=5 {
        assert!(tcp_echo(&w.client_ns(i), TCP_PORT, Duration::from_secs(2)).is_ok());
    }
    for &index in &clients {
        assert!(
            w.procs[index].exited().is_none(),
            "{}",
            w.procs[index].log()
        );
    }
    let total = transfer.finish();
    assert!(total > 100_000, "only {total} bytes went through");
}

/// How many grants the cluster's database holds.
fn stored_grants(w: &World) -> i64 {
    w.database
        .as_ref()
        .expect("a cluster")
        .scalar("SELECT COUNT(*) FROM authorizations")
}

/// Three portal nodes on one PostgreSQL database, as real processes: the client's session is
/// on node 1, the gateway's on node 2. The client reaches the resource; revoking its token
/// through node 3 cuts the traffic within 1 s and the grant is gone from the database.
#[test]
fn cluster_a_client_on_node_1_reaches_the_gateway_on_node_2_and_node_3_revokes() {
    if !can_run() {
        return;
    }
    let Some(mut w) = World::with_nodes(1, 3) else {
        return;
    };
    let gateway_portal = w.procs[0].status().expect("status")["portal"].clone();
    assert!(
        gateway_portal.as_str().is_some_and(|p| p.contains(":8081")),
        "the gateway is on node 2: {gateway_portal}"
    );
    let token = w.client_token.clone();
    w.client(1, "runner-1", &token);
    let ns = w.client_ns(1);
    assert_reaches(&w, &ns);
    let udp = udp_socket(&ns);
    assert!(udp_echo(&udp, b"before", Duration::from_secs(1)));
    assert_eq!(stored_grants(&w), 1);

    w.node_apis[2].delete(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    let cut = time_to_cut(&udp, Instant::now());
    eprintln!("revoking through node 3 cut the traffic through node 2's gateway after {cut:?}");
    assert!(
        cut <= CUT_BOUND,
        "traffic still flowed {cut:?} after the revocation\n{}",
        logs(&w)
    );
    w.wait_status(0, "without authorizations", |s| {
        s["authorizations_count"] == 0
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored_grants(&w) != 0 {
        assert!(
            Instant::now() < deadline,
            "the revoked grant stays in the database"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kill -9 of the gateway's node: the gateway moves to another node (its next `--api-url`),
/// the client's traffic keeps flowing or resumes, and a new client is granted access through
/// it.
#[test]
fn cluster_the_gateway_moves_when_its_node_is_killed() {
    if !can_run() {
        return;
    }
    let Some(mut w) = World::with_nodes(2, 3) else {
        return;
    };
    let token = w.client_token.clone();
    w.client(1, "runner-1", &token);
    let ns = w.client_ns(1);
    assert_reaches(&w, &ns);
    let udp = udp_socket(&ns);
    assert!(udp_echo(&udp, b"before", Duration::from_secs(1)));

    let sessions = w.procs[0].log().matches("session ready").count();
    let node_2 = w.other_nodes[0].take().expect("node 2");
    sh("kill", &["-9", &node_2.pid().to_string()]);
    let killed_at = Instant::now();
    drop(node_2);
    let deadline = Instant::now() + START;
    while w.procs[0].log().matches("session ready").count() <= sessions {
        assert!(
            Instant::now() < deadline,
            "the gateway never reconnected to another node\n{}",
            logs(&w)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w.wait_status(0, "connected to another node", |s| {
        s["state"] == "connected" && !s["portal"].as_str().unwrap_or("").contains(":8081")
    });
    assert!(
        (0..50).any(|n| udp_echo(
            &udp,
            format!("after {n}").as_bytes(),
            Duration::from_millis(200)
        )),
        "the client's traffic did not resume after node 2 died\n{}",
        logs(&w)
    );
    // A client that arrives now, on node 1, is granted access through the moved gateway.
    w.client(2, "runner-2", &token);
    assert_reaches(&w, &w.client_ns(2));

    // The survivors take node 2 for gone within 30 s of its death, with its presence.
    let database = w.database.as_ref().expect("a cluster");
    while database.scalar("SELECT COUNT(*) FROM portal_nodes") != 2 {
        assert!(
            Instant::now() < killed_at + Duration::from_secs(30),
            "node 2 is still counted 30 s after it was killed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        database.scalar("SELECT COUNT(DISTINCT node_id) FROM presence"),
        2,
        "only the live nodes' sessions count"
    );
}

/// Traffic from the tunnel reaches authorized resources only, never the gateway host's own
/// services — even when the gateway's own address lies in the resource's range (10.2.0.1 in
/// 10.2.0.0/24, on an allowed port).
#[test]
fn the_tunnel_does_not_reach_the_gateway_host_itself() {
    if !can_run() {
        return;
    }
    let (w, _, ns, _udp) = World::with_runner_reaching_the_resource();
    let gateway_ns = format!("{}g", w.prefix);
    let listener = in_netns(&gateway_ns, || {
        TcpListener::bind(("10.2.0.1", TCP_PORT)).expect("a service on the gateway host")
    });
    serve_tcp_echo(listener);
    assert!(
        tcp_echo_at(&gateway_ns, "10.2.0.1", TCP_PORT, Duration::from_secs(1)).is_ok(),
        "the gateway host's service answers locally"
    );
    assert!(
        tcp_echo_at(&ns, "10.2.0.1", TCP_PORT, Duration::from_secs(2)).is_err(),
        "a client reached a service of the gateway host through the tunnel\n{}",
        logs(&w)
    );
    assert!(
        tcp_echo(&ns, TCP_PORT, Duration::from_secs(2)).is_ok(),
        "the resource itself is still reached"
    );
}

/// A resource host can answer a client but not open a flow to it: even with a route to the
/// tunnel addresses through the gateway, a datagram the resource sends first to the client's
/// tunnel address is not forwarded into the tunnel. (TCP would fail anyway, at the client's
/// answer meeting the port filters; UDP needs no answer.)
#[test]
fn a_resource_host_cannot_open_a_flow_to_a_client() {
    if !can_run() {
        return;
    }
    let (w, client, ns, _udp) = World::with_runner_reaching_the_resource();
    let tunnel_ip = w.procs[client].status().expect("status")["addresses"]["ipv4"]
        .as_str()
        .expect("the client's tunnel address")
        .to_string();
    let on_client = in_netns(&ns, || {
        UdpSocket::bind(("0.0.0.0", UDP_PORT + 100)).expect("a socket on the client")
    });
    on_client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let resource_ns = format!("{}r", w.prefix);
    sh(
        "ip",
        &[
            "-n",
            &resource_ns,
            "route",
            "add",
            "100.64.0.0/10",
            "via",
            "10.2.0.1",
        ],
    );
    let from_resource = in_netns(&resource_ns, || {
        UdpSocket::bind(("10.2.0.5", 0)).expect("a socket on the resource host")
    });
    let mut buf = [0u8; 64];
    for n in 0..10 {
        let _ = from_resource.send_to(
            format!("unasked {n}").as_bytes(),
            (tunnel_ip.as_str(), UDP_PORT + 100),
        );
        assert!(
            on_client.recv_from(&mut buf).is_err(),
            "the resource host reached the client's {tunnel_ip} unasked\n{}",
            logs(&w)
        );
    }
    assert!(
        tcp_echo(&ns, TCP_PORT, Duration::from_secs(2)).is_ok(),
        "the client still reaches the resource"
    );
}

/// Handshake initiations as a flood sends them: `replayed` valid ones (MAC1 made with the
/// gateway's public key, from keys the gateway does not know), each sent again and again, and
/// junk of the same size and type.
fn handshake_flood(gateway_public: &boringtun::x25519::PublicKey, replayed: usize) -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    for n in 0..replayed {
        let private = boringtun::x25519::StaticSecret::from(rand::random::<[u8; 32]>());
        let mut tunn =
            boringtun::noise::Tunn::new(private, *gateway_public, None, None, n as u32, None);
        let mut buf = [0u8; 256];
        if let boringtun::noise::TunnResult::WriteToNetwork(init) =
            tunn.format_handshake_initiation(&mut buf, false)
        {
            datagrams.push(init.to_vec());
        }
        let mut junk: Vec<u8> = (0..148).map(|_| rand::random::<u8>()).collect();
        junk[..4].copy_from_slice(&1u32.to_le_bytes());
        datagrams.push(junk);
    }
    datagrams
}

/// WireGuard's DoS defence at the gateway: a flood of junk and replayed handshake initiations
/// (20,000 a second from another machine) is screened by MAC1 and, over the rate limit,
/// answered with cookies, before any Diffie-Hellman; the established tunnel keeps carrying
/// traffic throughout. Before, every initiation cost the gateway a key agreement and the flood
/// starved the tunnel.
#[test]
fn a_handshake_flood_does_not_stop_an_established_tunnel() {
    if !can_run() {
        return;
    }
    let mut w = World::new(2);
    let token = w.client_token.clone();
    w.client(1, "runner-1", &token);
    let ns = w.client_ns(1);
    assert_reaches(&w, &ns);
    let udp = udp_socket(&ns);
    let gateway_key =
        postern_device::keys::load_or_create(&w.procs[0].state_dir).expect("the gateway's key");
    let flood = handshake_flood(&gateway_key.public, 64);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let attacker = in_netns(&w.client_ns(2), || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("attacker socket");
        socket.connect("10.1.1.2:51820").expect("connect");
        socket
    });
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // 20,000 a second, in bursts of 200 every 10 ms.
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for datagram in flood.iter().cycle().take(200) {
                    let _ = attacker.send(datagram);
                }
                sent.fetch_add(200, Ordering::Relaxed);
                next += Duration::from_millis(10);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    // An echo every 200 ms for 6 s of flood.
    let tries = 30;
    let answered = (0..tries)
        .filter(|n| {
            let started = Instant::now();
            let answered = udp_echo(
                &udp,
                format!("during {n}").as_bytes(),
                Duration::from_secs(1),
            );
            if let Some(rest) = Duration::from_millis(200).checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
            answered
        })
        .count();
    stop.store(true, Ordering::Relaxed);
    flooder.join().expect("flooder");
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{sent} flood datagrams sent; {answered} of {tries} echoes through the tunnel answered"
    );
    assert!(
        answered >= tries * 9 / 10,
        "only {answered} of {tries} echoes got through during the flood\n{}",
        logs(&w)
    );
    w.wait_status(0, "counting the screened handshakes", |s| {
        s["dropped_packets"]["bad_handshake"].as_u64().unwrap_or(0) > 0
            && s["dropped_packets"]["handshake_under_load"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
}

// --- DNS resources ----------------------------------------------------------------------------

/// The names the resource network's DNS server knows, as an `addn-hosts` file.
const SITE_HOSTS: &str = "10.2.0.5 app.internal.test\n\
                          10.2.0.5 db.svc.internal.test\n\
                          10.2.0.5 a.b.svc.internal.test\n\
                          fd00:2::5 v6only.internal.test\n";

/// What the DNS tests add to a world: dnsmasq for the site (the gateway's `--dns-server`) and
/// one for the client host (its resolv.conf names it), DNS resources for `app.internal.test`
/// (HTTP, UDP echo) and `*.svc.internal.test` (TCP echo), an IPv6 CIDR resource and
/// `v6only.internal.test`, all granted to the group.
struct DnsSetup {
    hosts: PathBuf,
    site_dns: usize,
    resolv_conf: PathBuf,
    original_resolv_conf: String,
}

impl World {
    fn with_dns() -> (World, DnsSetup) {
        let mut w = World::new(1);
        let dir = w.data_dir.path().join("dns");
        std::fs::create_dir_all(&dir).expect("dns dir");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, SITE_HOSTS).expect("hosts");
        let hosts_arg = format!("--addn-hosts={}", hosts.display());
        let res = format!("{}r", w.prefix);
        let site_dns = w.dnsmasq(
            &res,
            "site-dns",
            &[
                &format!("--listen-address={SITE_DNS}"),
                &hosts_arg,
                // Answers for internal.test from the hosts file alone (no data, not refused).
                "--local=/internal.test/",
                // Records live 2 s: a moved one is followed soon.
                "--local-ttl=2",
            ],
        );
        let ns = w.client_ns(1);
        w.dnsmasq(
            &ns,
            "host-dns",
            &[
                &format!("--listen-address={HOST_DNS}"),
                "--address=/outside.test/10.9.9.9",
            ],
        );
        // `ip netns exec` mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).expect("/etc/netns");
        let resolv_conf = etc.join("resolv.conf");
        let original_resolv_conf =
            format!("# the host's own\nnameserver {HOST_DNS}\noptions timeout:1\n");
        std::fs::write(&resolv_conf, &original_resolv_conf).expect("resolv.conf");

        let site_id = string(&w.api.get("/v1/sites")["data"][0], "id");
        let grant = |body: Value| {
            let mut body = body;
            body["site_id"] = json!(site_id);
            let resource = w.api.post("/v1/resources", body);
            let resource_id = string(&resource["data"], "id");
            w.api.post(
                "/v1/policies",
                json!({"group_id": w.group_id, "resource_id": resource_id}),
            );
        };
        grant(
            json!({"type": "dns", "name": "app", "address": "app.internal.test",
                     "filters": [{"protocol": "tcp", "ports": HTTP_PORT.to_string()},
                                 {"protocol": "udp", "ports": UDP_PORT.to_string()}]}),
        );
        grant(
            json!({"type": "dns", "name": "services", "address": "*.svc.internal.test",
                     "filters": [{"protocol": "tcp", "ports": TCP_PORT.to_string()}]}),
        );
        grant(
            json!({"type": "dns", "name": "v6only", "address": "v6only.internal.test",
                     "filters": [{"protocol": "tcp", "ports": HTTP_PORT.to_string()}]}),
        );
        grant(
            json!({"type": "cidr", "name": "lan6", "address": "fd00:2::/64",
                     "filters": [{"protocol": "tcp", "ports": TCP_PORT.to_string()}]}),
        );
        (
            w,
            DnsSetup {
                hosts,
                site_dns,
                resolv_conf,
                original_resolv_conf,
            },
        )
    }

    /// Starts dnsmasq in namespace `ns` (no other configuration, no upstream); its index in
    /// `procs`.
    fn dnsmasq(&mut self, ns: &str, id: &str, args: &[&str]) -> usize {
        let dir = self.data_dir.path().join(id);
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let file = File::create(&log).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file=",
                "--user=root",
            ])
            .args(["--log-facility=-", "--log-queries"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("dnsmasq (apt-get install dnsmasq-base): {err}"));
        self.procs.push(Proc {
            name: format!("dnsmasq {id}"),
            child,
            log,
            state_dir: dir,
        });
        self.procs.len() - 1
    }
}

/// `ip netns exec NS PROGRAM ARGS...`: exit status and output (stdout, then stderr).
fn in_ns(ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The body of `curl http://NAME:PORT/` in namespace `ns`, or why it failed.
fn curl(ns: &str, name: &str, port: u16, timeout: Duration) -> Result<String, String> {
    let url = format!("http://{name}:{port}/");
    let seconds = format!("{:.1}", timeout.as_secs_f64());
    let (ok, text) = in_ns(ns, "curl", &["-sS", "--max-time", &seconds, &url]);
    if ok {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Retries `curl` while access is requested and the tunnel comes up.
#[track_caller]
fn curl_until(world: &World, ns: &str, name: &str, wanted: &str) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(20);
    loop {
        match curl(ns, name, HTTP_PORT, Duration::from_secs(3)) {
            Ok(body) if body.contains(wanted) => return start.elapsed(),
            other if Instant::now() > deadline => panic!(
                "curl http://{name}:{HTTP_PORT}/ from {ns} never answered '{wanted}': {other:?}\n{}",
                logs(world)
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The addresses `getent ahostsv4 NAME` (or `ahostsv6`) finds in namespace `ns`.
fn lookup(ns: &str, name: &str, family: &str) -> Vec<std::net::IpAddr> {
    let (_, text) = in_ns(ns, "getent", &[&format!("ahosts{family}"), name]);
    let mut found: Vec<std::net::IpAddr> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    found.dedup();
    found
}

#[test]
fn a_service_account_reaches_services_by_name_and_revocation_cuts_them() {
    if !can_run_dns() {
        return;
    }
    let (mut w, dns) = World::with_dns();
    let token = w.client_token.clone();
    let client = w.client_with(1, "runner-1", &token, 1, &["--dns-control", "resolv-conf"]);
    let ns = w.client_ns(1);

    // The system's resolver now asks the client; the host's own servers became its upstream.
    let written = std::fs::read_to_string(&dns.resolv_conf).expect("resolv.conf");
    assert!(
        written.contains("nameserver 198.18.0.53") && !written.contains(HOST_DNS),
        "{written}"
    );
    assert!(
        written.contains("options timeout:1"),
        "options are kept: {written}"
    );

    // By name, through the tunnel; the resource sees the gateway's address.
    let first = curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.5");
    eprintln!("first curl by name answered after {first:?}");
    let app = lookup(&ns, "app.internal.test", "v4");
    assert_eq!(app.len(), 1, "{app:?}");
    assert!(
        app[0].to_string().starts_with("198.18."),
        "a proxy address: {app:?}"
    );

    // `*` is one label: db.svc matches, a.b.svc does not (and the host's resolver does not
    // know it either).
    let db = lookup(&ns, "db.svc.internal.test", "v4");
    assert!(db.len() == 1 && db[0] != app[0], "{db:?}");
    let db_proxy: &'static str = Box::leak(db[0].to_string().into_boxed_str());
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp_echo_at(&ns, db_proxy, TCP_PORT, Duration::from_secs(2)).is_err() {
        assert!(
            Instant::now() < deadline,
            "db.svc.internal.test never echoed\n{}",
            logs(&w)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lookup(&ns, "a.b.svc.internal.test", "v4").is_empty());

    // A name outside every resource resolves through the host's resolver, as before.
    assert_eq!(
        lookup(&ns, "outside.test", "v4"),
        vec!["10.9.9.9".parse::<std::net::IpAddr>().unwrap()]
    );

    // A port outside the filter is blocked.
    assert!(
        curl(&ns, "app.internal.test", TCP_PORT, Duration::from_secs(2)).is_err(),
        "tcp/{TCP_PORT} is outside app's filter"
    );

    // `status` shows the resolver and the names.
    let status = w.procs[client].status().expect("status");
    assert_eq!(status["dns"]["mode"], "resolv-conf");
    assert_eq!(
        status["dns"]["upstreams"],
        json!([format!("{HOST_DNS}:53")])
    );
    let (ok, text) = in_ns(
        &ns,
        sibling_binary("postern-client").to_str().expect("utf-8"),
        &[
            "status",
            "--state-dir",
            w.procs[client].state_dir.to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("resolv-conf")
            && text.contains("app.internal.test")
            && text.contains("granted"),
        "{text}"
    );

    // Revoking the token cuts the named resource within 1 s, and the client puts the
    // system's resolver back as it exits.
    let udp = udp_socket_to(&ns, SocketAddr::new(app[0], UDP_PORT));
    assert_udp_echoes(&w, &udp, "by name");
    w.api
        .delete(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    let cut = time_to_cut(&udp, Instant::now());
    eprintln!("revoking the token cut the named resource after {cut:?}");
    assert!(
        cut <= CUT_BOUND,
        "the named resource was reachable {cut:?} after revocation"
    );
    let deadline = Instant::now() + START;
    while w.procs[client].exited().is_none() {
        assert!(Instant::now() < deadline, "the client did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(&dns.resolv_conf).expect("resolv.conf"),
        dns.original_resolv_conf,
        "the resolver configuration is restored"
    );
    let _ = dns.site_dns;
}

#[test]
fn a_moved_record_is_followed_and_ipv6_resources_and_names_work() {
    if !can_run_dns() {
        return;
    }
    let (mut w, dns) = World::with_dns();
    let token = w.client_token.clone();
    let client = w.client_with(1, "runner-1", &token, 1, &["--dns-control", "resolv-conf"]);
    let ns = w.client_ns(1);
    curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.5");

    // The record moves: after its TTL the same name reaches the new address.
    std::fs::write(
        &dns.hosts,
        SITE_HOSTS.replace("10.2.0.5 app", "10.2.0.6 app"),
    )
    .expect("hosts");
    let pid = w.procs[dns.site_dns].child.id().to_string();
    // dnsmasq runs under `ip netns exec`, which execs it: the child is dnsmasq.
    sh("kill", &["-HUP", &pid]);
    let moved = curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.6");
    eprintln!("the moved record was followed after {moved:?}");

    // An IPv6 CIDR resource.
    let deadline = Instant::now() + Duration::from_secs(15);
    while tcp_echo_at(&ns, "[fd00:2::5]", TCP_PORT, Duration::from_secs(2)).is_err() {
        assert!(
            Instant::now() < deadline,
            "[{RESOURCE_V6}]:{TCP_PORT} never echoed\n{}",
            logs(&w)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A name with only an AAAA record: its IPv4 proxy is refused at once by the gateway
    // (host unreachable), its IPv6 one reaches the resource.
    let body = curl_until(
        &w,
        &ns,
        "v6only.internal.test",
        &format!("hello from {RESOURCE_V6}"),
    );
    eprintln!("an IPv6-only name answered after {body:?}");
    let (_, text) = in_ns(
        &ns,
        "curl",
        &[
            "-4",
            "-sS",
            "--max-time",
            "5",
            &format!("http://v6only.internal.test:{HTTP_PORT}/"),
        ],
    );
    // curl's error 7 (could not connect: refused by an ICMP error), not 28 (timed out).
    assert!(
        text.contains("curl: (7)"),
        "the IPv4 proxy of an IPv6-only name fails at once: {text}"
    );
    // …and the client was told why (its status is rewritten within a second).
    w.wait_status(
        client,
        "showing why v6only.internal.test fails over IPv4",
        |s| {
            s["dns"]["unresolvable"]["v6only.internal.test"] == "no IPv4 address at gateway gateway"
        },
    );
}

#[test]
fn a_killed_client_leaves_the_resolver_configuration_to_its_next_start() {
    if !can_run_dns() {
        return;
    }
    let (mut w, dns) = World::with_dns();
    let token = w.client_token.clone();
    let first = w.client_with(1, "runner-1", &token, 1, &["--dns-control", "resolv-conf"]);
    let ns = w.client_ns(1);
    curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.5");
    let pid = w.procs[first].child.id().to_string();
    // `ip netns exec` execs the client: SIGKILL reaches the client itself.
    sh("kill", &["-KILL", &pid]);
    let _ = w.procs[first].child.wait();
    assert!(
        std::fs::read_to_string(&dns.resolv_conf)
            .expect("resolv.conf")
            .contains("198.18.0.53"),
        "a killed client cannot restore"
    );
    let state_dir = w.procs[first].state_dir.clone();
    let (ok, text) = in_ns(
        &ns,
        sibling_binary("postern-client").to_str().expect("utf-8"),
        &[
            "restore-dns",
            "--state-dir",
            state_dir.to_str().expect("utf-8"),
        ],
    );
    assert!(ok && text.contains("restored"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&dns.resolv_conf).expect("resolv.conf"),
        dns.original_resolv_conf
    );

    // Killed again, then started again: the new run restores first, then points the system
    // at itself, and a clean stop restores once more. (Each run shares the state directory:
    // the killed run's status file must not pass for the next one's.)
    let _ = std::fs::remove_file(state_dir.join("status.json"));
    let second = w.client_with(1, "runner-1", &token, 1, &["--dns-control", "resolv-conf"]);
    curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.5");
    sh("kill", &["-KILL", &w.procs[second].child.id().to_string()]);
    let _ = w.procs[second].child.wait();
    let _ = std::fs::remove_file(state_dir.join("status.json"));
    let third = w.client_with(1, "runner-1", &token, 1, &["--dns-control", "resolv-conf"]);
    assert!(
        w.procs[third].log().contains("restored"),
        "{}",
        w.procs[third].log()
    );
    curl_until(&w, &ns, "app.internal.test", "hello from 10.2.0.5");
    sh("kill", &["-TERM", &w.procs[third].child.id().to_string()]);
    let _ = w.procs[third].child.wait();
    assert_eq!(
        std::fs::read_to_string(&dns.resolv_conf).expect("resolv.conf"),
        dns.original_resolv_conf
    );
}

// --- the Internet resource ----------------------------------------------------------------------

/// `ip -4 rule` and `ip -4 route show table 7073` in namespace `ns`, for the full tunnel's state.
fn full_tunnel_routing(ns: &str) -> String {
    let (_, rules) = in_ns(ns, "ip", &["-4", "rule"]);
    let (_, table) = in_ns(ns, "ip", &["-4", "route", "show", "table", "7073"]);
    format!("{rules}{table}")
}

#[test]
fn the_internet_resource_carries_everything_else_for_a_client_that_opts_in() {
    if !can_run_dns() {
        return;
    }
    let mut w = World::new(2);
    let site_id = string(&w.api.get("/v1/sites")["data"][0], "id");
    let internet = w.api.post(
        "/v1/resources",
        json!({"type": "internet", "name": "internet", "site_id": site_id}),
    );
    assert_eq!(internet["data"]["address"], "0.0.0.0/0, ::/0");
    let internet_id = string(&internet["data"], "id");
    w.api.post(
        "/v1/policies",
        json!({"group_id": w.group_id, "resource_id": internet_id}),
    );
    let (status, problem) = w.api.call(
        reqwest::Method::POST,
        "/v1/resources",
        Some(json!({"type": "internet", "name": "second", "site_id": site_id})),
    );
    assert_eq!(
        status,
        reqwest::StatusCode::CONFLICT,
        "one per account: {problem}"
    );

    // Names: the site's DNS knows far.test; the client hosts' resolv.conf names their own
    // stub resolver, which knows no other server.
    let res = format!("{}r", w.prefix);
    w.dnsmasq(
        &res,
        "site-dns",
        &[
            &format!("--listen-address={SITE_DNS}"),
            "--address=/far.test/10.3.0.5",
        ],
    );
    for i in [1, 2] {
        let etc = PathBuf::from(format!("/etc/netns/{}", w.client_ns(i)));
        std::fs::create_dir_all(&etc).expect("/etc/netns");
        std::fs::write(etc.join("resolv.conf"), "nameserver 198.18.0.53\n").expect("resolv.conf");
    }

    let token = w.client_token.clone();
    let full = w.client_with(
        1,
        "full-1",
        &token,
        1,
        &["--dns-control", "disabled", "--internet"],
    );
    let plain = w.client_with(2, "plain-1", &token, 1, &["--dns-control", "disabled"]);
    let (full_ns, plain_ns) = (w.client_ns(1), w.client_ns(2));

    // An address outside every resource, through the gateway: the far end sees the gateway.
    let first = curl_until(&w, &full_ns, "10.3.0.5", "hello from 10.3.0.5 to 10.3.0.1");
    eprintln!("the first request through the full tunnel answered after {first:?}");
    // A resource of its own still goes its own way; the portal stays reachable outside.
    assert_reaches(&w, &full_ns);
    let routing = full_tunnel_routing(&full_ns);
    assert!(
        routing.contains("to 10.1.1.2 lookup main") && routing.contains("lookup 7073"),
        "{routing}"
    );
    let (ok, health) = in_ns(
        &full_ns,
        "curl",
        &["-sS", "--max-time", "3", "http://10.1.1.2:8080/healthz"],
    );
    assert!(
        ok && health.trim() == "ok",
        "the portal from the full tunnel's host: {health}"
    );
    w.wait_status(full, "showing the full tunnel", |s| s["internet"] == "on");

    // While it is on, names go to the gateway's resolver too: the site's DNS answers.
    w.wait_status(full, "forwarding names to the gateway", |s| {
        s["dns"]["upstreams"] == json!(["198.18.0.54:53", "[fd70:6f73:7465:726f::54]:53"])
    });
    curl_until(&w, &full_ns, "far.test", "hello from 10.3.0.5 to 10.3.0.1");
    assert!(
        lookup(&plain_ns, "far.test", "v4").is_empty(),
        "without the full tunnel the name is not the gateway's to resolve"
    );

    // Without --internet nothing changes: no route to the far network at all.
    assert!(curl(&plain_ns, "10.3.0.5", HTTP_PORT, Duration::from_secs(2)).is_err());
    assert!(!full_tunnel_routing(&plain_ns).contains("7073"));
    w.wait_status(plain, "showing the Internet resource unused", |s| {
        s["internet"] == "off"
    });

    // The policy goes: the full tunnel goes with it, and stopping the client leaves nothing.
    sh("kill", &["-TERM", &w.procs[full].child.id().to_string()]);
    let _ = w.procs[full].child.wait();
    let routing = full_tunnel_routing(&full_ns);
    assert!(
        !routing.contains("7073") && !routing.contains("10.1.1.2"),
        "restored: {routing}"
    );
}

// --- the rootless client ----------------------------------------------------------------------

const SOCKS5: &str = "127.0.0.1:1080";
const HTTP_PROXY: &str = "127.0.0.1:3128";
/// `--forward 7070=10.2.0.5:7000`: the TCP echo of the CIDR resource.
const FORWARD: &str = "127.0.0.1:7070";
/// `--forward udp:7071=10.2.0.5:7001`: its UDP echo.
const UDP_FORWARD: &str = "127.0.0.1:7071";

impl World {
    /// `postern-client` in client namespace `i` as `nobody`, without capabilities and without a
    /// TUN, with a SOCKS5 proxy, an HTTP proxy and a forward to the TCP echo. Its binary and
    /// state directory are copies `nobody` may use (the checkout may not be readable to it).
    fn rootless_client(&mut self, i: usize, id: &str, token: &str) -> usize {
        use std::os::unix::fs::PermissionsExt;
        let root = self.data_dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("dir");
        let binary = dir.join("postern-client");
        std::fs::copy(sibling_binary("postern-client"), &binary).expect("binary copied");
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        sh(
            "chown",
            &["-R", "nobody:nogroup", state_dir.to_str().expect("utf-8")],
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let log = dir.join("log");
        let file = File::create(&log).expect("log");
        let ns = self.client_ns(i);
        let forward = format!("7070={RESOURCE}:{TCP_PORT}");
        let udp_forward = format!("udp:7071={RESOURCE}:{UDP_PORT}");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
            ])
            .args([
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(&binary)
            .args(["--id", id, "--name", id, "--state-dir"])
            .arg(&state_dir)
            .args(["--api-url", "http://10.1.1.2:8080", "--insecure"])
            .args([
                "--socks5",
                SOCKS5,
                "--http-proxy",
                HTTP_PROXY,
                "--forward",
                &forward,
            ])
            .args(["--forward", &udp_forward])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,postern_client=debug")
            .env("POSTERN_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("setpriv");
        self.procs.push(Proc {
            name: format!("rootless postern-client {id}"),
            child,
            log,
            state_dir,
        });
        let index = self.procs.len() - 1;
        self.wait_status(index, "connected with its addresses", |s| {
            s["state"] == "connected" && s["addresses"].is_object()
        });
        index
    }
}

/// A UDP socket in namespace `ns` connected to `to`.
fn udp_socket_to(ns: &str, to: SocketAddr) -> UdpSocket {
    let local = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    in_netns(ns, move || {
        let socket = UdpSocket::bind(local).expect("udp");
        socket.connect(to).expect("connect");
        socket
    })
}

/// An echo comes back within 20 tries (the first datagrams ask for access).
#[track_caller]
fn assert_udp_echoes(world: &World, udp: &UdpSocket, what: &str) {
    assert!(
        (0..20).any(|n| udp_echo(
            udp,
            format!("{what} {n}").as_bytes(),
            Duration::from_millis(500)
        )),
        "no UDP echo {what}\n{}",
        logs(world)
    );
}

/// `curl` in namespace `ns` with extra arguments: the body, or curl's error.
fn curl_via(ns: &str, args: &[&str], url: &str) -> Result<String, String> {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    all.push(url);
    let (ok, text) = in_ns(ns, "curl", &all);
    if ok {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A TCP connection to `to` from namespace `ns` (a thread in it connects).
fn connect_in(ns: &str, to: &'static str) -> TcpStream {
    in_netns(ns, move || {
        let stream = TcpStream::connect(to).expect("connected");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
    })
}

fn echo_through(stream: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    stream.write_all(payload).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).map_err(|e| e.to_string())?;
    (back == payload)
        .then_some(())
        .ok_or_else(|| "wrong echo".to_string())
}

#[test]
fn a_client_without_privileges_reaches_resources_through_its_proxies_and_forwards() {
    if !can_run_dns() {
        return;
    }
    let (mut w, _dns) = World::with_dns();
    let token = w.client_token.clone();
    let client = w.rootless_client(1, "rootless-1", &token);
    let ns = w.client_ns(1);
    assert!(
        !in_ns(&ns, "ip", &["link", "show", "postern0"]).0,
        "no TUN device in user-space mode"
    );

    // SOCKS5 with the name resolved by the client (a DNS resource), and the HTTP proxy both
    // ways: plain forwarding and CONNECT.
    let socks = format!("socks5h://{SOCKS5}");
    let url = format!("http://app.internal.test:{HTTP_PORT}/");
    let body = curl_via(&ns, &["--proxy", &socks], &url)
        .unwrap_or_else(|e| panic!("SOCKS5 by name: {e}\n{}", logs(&w)));
    assert!(body.contains("hello from 10.2.0.5"), "{body}");
    let proxy = format!("http://{HTTP_PROXY}");
    let body = curl_via(&ns, &["--proxy", &proxy], &url).expect("HTTP forwarding");
    assert!(body.contains("hello from 10.2.0.5"), "{body}");
    let body = curl_via(&ns, &["--proxy", &proxy, "--proxytunnel"], &url).expect("CONNECT");
    assert!(body.contains("hello from 10.2.0.5"), "{body}");
    let by_address = format!("http://{RESOURCE}:{HTTP_PORT}/");
    let body = curl_via(&ns, &["--proxy", &socks], &by_address).expect("SOCKS5 by address");
    assert!(body.contains("hello from 10.2.0.5"), "{body}");

    // A UDP forward reaches the UDP echo.
    let forward: SocketAddr = UDP_FORWARD.parse().expect("address");
    let udp = udp_socket_to(&ns, forward);
    assert_udp_echoes(&w, &udp, "through the forward");

    // A port outside the filter and an address outside every resource fail at once with the
    // proxies' errors.
    let started = Instant::now();
    let filtered = format!("http://{RESOURCE}:{BLOCKED_PORT}/");
    let refused = curl_via(&ns, &["--proxy", &socks], &filtered).expect_err("filtered");
    // Reply 2: "connection not allowed by ruleset".
    assert!(
        refused.contains("(97)") && refused.contains("(2)"),
        "{refused}"
    );
    let answer = curl_via(
        &ns,
        &["--proxy", &proxy, "-w", "\n%{http_code}"],
        "http://10.9.9.9/",
    )
    .expect("an HTTP answer");
    assert!(
        answer.ends_with("403") && answer.contains("10.9.9.9 is in no resource"),
        "403 saying why: {answer}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused, not timed out"
    );

    // The forward reaches the TCP echo; 200 connections at once work and leave nothing behind.
    let mut stream = connect_in(&ns, FORWARD);
    echo_through(&mut stream, b"hello forward").expect("echo through the forward");
    let mut many: Vec<TcpStream> = (0..200).map(|_| connect_in(&ns, FORWARD)).collect();
    for (n, stream) in many.iter_mut().enumerate() {
        echo_through(stream, format!("connection {n}").as_bytes())
            .unwrap_or_else(|e| panic!("connection {n}: {e}\n{}", logs(&w)));
    }
    // 200 TCP connections, the first one and the UDP flow.
    w.wait_status(client, "with 202 proxied connections", |s| {
        s["userspace"]["open"] == 202
    });
    drop(many);
    w.wait_status(client, "with the 200 closed and their sockets gone", |s| {
        s["userspace"]["open"] == 2 && s["userspace"]["stack_sockets"] == 2
    });

    // Revoking the token closes the open proxied connection within 1 s.
    w.api
        .delete(&format!("/v1/actors/{}/tokens/{}", w.actor_id, w.token_id));
    let revoked = Instant::now();
    let mut buf = [0u8; 1];
    let read = stream.read(&mut buf);
    let cut = revoked.elapsed();
    eprintln!("revoking the token closed the proxied connection after {cut:?}");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection is closed: {read:?}"
    );
    assert!(cut <= CUT_BOUND, "closed after {cut:?}");
}

#[test]
fn a_hundred_megabytes_through_socks5_arrive_intact() {
    if !can_run_dns() {
        return;
    }
    let (mut w, _dns) = World::with_dns();
    let token = w.client_token.clone();
    w.rootless_client(1, "rootless-1", &token);
    let ns = w.client_ns(1);
    // A SOCKS5 CONNECT to the TCP echo, by hand (RFC 1928): no authentication, IPv4 target.
    let mut stream = connect_in(&ns, SOCKS5);
    stream.write_all(&[5, 1, 0]).expect("greeting");
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).expect("method");
    assert_eq!(reply, [5, 0]);
    let mut request = vec![5, 1, 0, 1, 10, 2, 0, 5];
    request.extend_from_slice(&TCP_PORT.to_be_bytes());
    stream.write_all(&request).expect("connect");
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(
        reply[1],
        0,
        "SOCKS5 CONNECT succeeded: {reply:?}\n{}",
        logs(&w)
    );

    const TOTAL: usize = 100 * 1024 * 1024;
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let mut block = vec![0u8; 64 * 1024];
        let mut digest = Crc::new();
        let mut sent = 0;
        while sent < TOTAL {
            for (i, byte) in block.iter_mut().enumerate() {
                *byte = ((sent + i) * 31 % 253) as u8;
            }
            writer.write_all(&block).expect("sent");
            digest.update(&block);
            sent += block.len();
        }
        digest.value()
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut received = 0;
    let mut digest = Crc::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let started = Instant::now();
    while received < TOTAL {
        let n = stream.read(&mut buffer).expect("received");
        assert!(n > 0, "closed after {received} bytes");
        digest.update(&buffer[..n]);
        received += n;
    }
    let elapsed = started.elapsed();
    let sent = sender.join().expect("sender");
    assert_eq!(digest.value(), sent, "what came back is what was sent");
    eprintln!(
        "100 MiB each way through SOCKS5 in {elapsed:?} ({:.0} Mbit/s each way)",
        (TOTAL * 8) as f64 / elapsed.as_secs_f64() / 1e6
    );
}

/// FNV-1a over a stream of bytes: enough to tell a corrupted, reordered or truncated copy.
struct Crc(u64);

impl Crc {
    fn new() -> Self {
        Crc(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn value(&self) -> u64 {
        self.0
    }
}

/// Workload identity, as a CI job uses it: the service account trusts an issuer (its keys kept
/// with the rule: no network to the issuer), the job's client holds only an ID token file and
/// reaches the resource; its token (one minute long) is renewed with a third of its life left,
/// a transfer through the tunnel carries on across the renewal and past the first token's end,
/// and a job whose ID token's subject does not match exits 3 naming the subject.
#[test]
fn a_ci_job_reaches_the_resource_with_its_id_token_and_renews_without_dropping_a_transfer() {
    if !can_run() {
        return;
    }
    let mut w = World::new(2);
    let issuer =
        postern_workload_identity::test_issuer::TestIssuer::new("https://ci.example", "k1");
    let rule = w.api.post(
        &format!("/v1/actors/{}/workload-identities", w.actor_id),
        json!({
            "issuer": issuer.issuer, "audience": "postern", "subject": "repo:acme/deploy:*",
            "claims": {"repository_owner": "acme"}, "token_lifetime": "1m", "jwks": issuer.jwks(),
        }),
    )["data"]
        .clone();
    let now = chrono::Utc::now().timestamp();
    let id_token_file = |name: &str, subject: &str| {
        let mut claims = issuer.claims("postern", subject, now);
        claims["exp"] = json!(now + 600);
        let path = w.data_dir.path().join(name);
        std::fs::write(&path, issuer.sign(&claims)).expect("id token file");
        path.to_str().expect("utf-8").to_string()
    };
    let good = id_token_file("job-token", "repo:acme/deploy:ref:refs/heads/main");
    let bad = id_token_file("evil-token", "repo:evil/deploy:ref:refs/heads/main");

    let args = ["--dns-control", "disabled", "--id-token-file", &good];
    let job = w.client_given(1, "ci-job", None, 1, &args);
    let ns = w.client_ns(1);
    assert_reaches(&w, &ns);
    let status = w.procs[job].status().expect("status");
    let first = string(&status["token"], "id");
    let workload = &status["workload_identity"];
    assert_eq!(workload["token_id"], first.as_str(), "{status}");
    assert!(
        string(workload, "source").contains("ID token file"),
        "{status}"
    );
    assert!(workload["renews_at"].as_str() < workload["token_expires_at"].as_str());
    let exchanged = w
        .api
        .get(&format!("/v1/actors/{}/tokens/{first}", w.actor_id));
    assert_eq!(exchanged["data"]["workload_identity_id"], rule["id"]);
    let first_end: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(exchanged["data"]["expires_at"].clone()).expect("expiry");

    let mut transfer = Transfer::start(&ns);
    transfer.read_for(Duration::from_secs(1));
    // Renewed at about 40 s of its 60.
    while w.procs[job]
        .status()
        .is_some_and(|s| s["token"]["id"] == first.as_str())
    {
        assert!(
            chrono::Utc::now() < first_end,
            "not renewed before the token ended"
        );
        transfer.read_for(Duration::from_millis(500));
    }
    w.wait_status(job, "connected with the renewed token", |s| {
        s["state"] == "connected" && s["token"]["id"] != first.as_str()
    });
    let status = w.procs[job].status().expect("status");
    let second = string(&status["token"], "id");
    assert_eq!(
        status["workload_identity"]["token_id"],
        second.as_str(),
        "{status}"
    );
    assert!(
        status["workload_identity"]["last_error"].is_null(),
        "{status}"
    );
    let renewal = w.api.get("/v1/audit-events?action=token.exchange")["data"][0].clone();
    assert_eq!(renewal["object_id"], second.as_str());
    assert_eq!(renewal["after"]["replaces"], first.as_str(), "{renewal}");
    // Past the first token's end the job goes on.
    while chrono::Utc::now() < first_end + chrono::Duration::seconds(2) {
        transfer.read_for(Duration::from_millis(500));
    }
    assert!(w.procs[job].exited().is_none(), "{}", w.procs[job].log());
    let total = transfer.finish();
    assert!(total > 100_000, "only {total} bytes went through");
    let log = w.procs[job].log();
    let id_token = std::fs::read_to_string(&good).expect("id token");
    assert!(!log.contains(&id_token), "the ID token is never logged");

    // A job of another repository is refused at start, with the reason.
    let url = "http://10.1.1.2:8080";
    let mut evil = w.spawn_with(
        "postern-client",
        &w.client_ns(2),
        "evil-job",
        None,
        &[
            "--api-url",
            url,
            "--insecure",
            "--no-tunnel",
            "--id-token-file",
            &bad,
        ],
    );
    let deadline = Instant::now() + START;
    let code = loop {
        if let Some(status) = evil.exited() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the refused job still runs");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(3), "{}", evil.log());
    assert!(evil.log().contains("repo:evil/deploy"), "{}", evil.log());
}
