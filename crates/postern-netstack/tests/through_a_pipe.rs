//! The stack against a remote host in memory: another smoltcp interface at the far end of its
//! packet pipe, with TCP echo listeners. Connections carry data both ways intact, a closed port
//! is refused, and many connections open and close without leaving state behind.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use postern_netstack::{ConnectError, NetStack, PacketPipe};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const ECHO_PORT: u16 = 7000;
const UDP_ECHO_PORT: u16 = 7001;
const LISTENERS: usize = 64;

struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push_back(packet);
        result
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1280;
        caps
    }
}

fn listener() -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
    );
    socket.listen(ECHO_PORT).expect("listen");
    socket
}

/// The far end: echoes every connection to port 7000 (up to `LISTENERS` at once), refuses
/// other ports; runs until the pipe closes.
async fn remote_host(mut pipe: PacketPipe) {
    let mut device = Queues {
        rx: VecDeque::new(),
        tx: VecDeque::new(),
    };
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ip),
        &mut device,
        Instant::now(),
    );
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(REMOTE), 24));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(REMOTE);
    let mut sockets = SocketSet::new(Vec::new());
    let mut handles: Vec<SocketHandle> = (0..LISTENERS).map(|_| sockets.add(listener())).collect();
    let udp_buffer =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]);
    let mut udp_echo = udp::Socket::new(udp_buffer(), udp_buffer());
    udp_echo.bind(UDP_ECHO_PORT).expect("bind");
    let udp_echo = sockets.add(udp_echo);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        iface.poll(Instant::now(), &mut device, &mut sockets);
        for handle in &mut handles {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            while socket.can_recv() && socket.can_send() {
                let room = socket.send_capacity() - socket.send_queue();
                let take = room.min(buffer.len());
                let Ok(read) = socket.recv_slice(&mut buffer[..take]) else {
                    break;
                };
                if read == 0 {
                    break;
                }
                let _ = socket.send_slice(&buffer[..read]);
            }
            if !socket.may_recv() && socket.state() == tcp::State::CloseWait {
                socket.close();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                sockets.remove(*handle);
                *handle = sockets.add(listener());
            }
        }
        let socket = sockets.get_mut::<udp::Socket>(udp_echo);
        while let Ok((len, meta)) = socket.recv_slice(&mut buffer) {
            let datagram = buffer[..len].to_vec();
            let _ = socket.send_slice(&datagram, meta.endpoint);
        }
        iface.poll(Instant::now(), &mut device, &mut sockets);
        for packet in device.tx.drain(..) {
            if pipe.inbound.send(packet).await.is_err() {
                return;
            }
        }
        let delay = iface
            .poll_delay(Instant::now(), &sockets)
            .map_or(Duration::from_millis(50), Duration::from)
            .min(Duration::from_millis(50));
        tokio::select! {
            packet = pipe.outbound.recv() => match packet {
                Some(packet) => {
                    device.rx.push_back(packet);
                    while let Ok(packet) = pipe.outbound.try_recv() {
                        device.rx.push_back(packet);
                    }
                }
                None => return,
            },
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn stack() -> NetStack {
    let (stack, pipe, stack_pipe) = NetStack::new(1280, 7);
    stack.set_addresses(CLIENT, Ipv6Addr::LOCALHOST);
    tokio::spawn(stack.clone().run(stack_pipe));
    tokio::spawn(remote_host(pipe));
    stack
}

fn echo() -> SocketAddr {
    SocketAddr::from((REMOTE, ECHO_PORT))
}

#[tokio::test]
async fn a_connection_carries_ten_megabytes_both_ways_intact() {
    let stack = stack();
    let connection = stack.connect(echo()).await.expect("connected");
    let (mut reader, mut writer) = tokio::io::split(connection);
    let payload: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.expect("written");
        writer.shutdown().await.expect("shut down");
        writer
    });
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut received))
        .await
        .expect("in time")
        .expect("read");
    let _writer = writing.await.expect("writer");
    assert_eq!(received.len(), payload.len());
    assert!(received == payload, "the echo differs from what was sent");
}

#[tokio::test]
async fn a_closed_port_is_refused_and_nothing_connects_before_the_addresses() {
    let (early, _pipe, _stack_pipe) = NetStack::new(1280, 1);
    assert_eq!(
        early.connect(echo()).await.err(),
        Some(ConnectError::NoAddresses)
    );
    let stack = stack();
    let closed = SocketAddr::from((REMOTE, 9));
    let refused = tokio::time::timeout(Duration::from_secs(10), stack.connect(closed))
        .await
        .expect("refused at once, not timed out");
    assert_eq!(refused.err(), Some(ConnectError::Refused(closed)));
}

#[tokio::test]
async fn many_connections_open_and_leave_no_state_once_closed() {
    let stack = stack();
    for round in 0..4 {
        let mut open = Vec::new();
        for _ in 0..50 {
            open.push(stack.connect(echo()).await.expect("connected"));
        }
        assert_eq!(
            stack.stats().open.load(Ordering::Relaxed),
            50,
            "round {round}"
        );
        for connection in &mut open {
            connection.write_all(b"ping").await.expect("written");
            let mut back = [0u8; 4];
            connection.read_exact(&mut back).await.expect("echoed");
            assert_eq!(&back, b"ping");
            connection.shutdown().await.expect("shut down");
        }
        drop(open);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while stack.stats().open.load(Ordering::Relaxed) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "sockets left open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(stack.stats().opened.load(Ordering::Relaxed), 200);
}

#[tokio::test]
async fn udp_datagrams_go_and_come_back_from_their_one_remote() {
    let stack = stack();
    let remote = SocketAddr::from((REMOTE, UDP_ECHO_PORT));
    let socket = stack.udp(remote).expect("a UDP socket");
    let mut buffer = [0u8; 2048];
    for n in 0..20u8 {
        let datagram = vec![n; 1000];
        socket.send(&datagram).await.expect("sent");
        let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
            .await
            .expect("echoed in time")
            .expect("received");
        assert_eq!(&buffer[..len], &datagram[..]);
    }
    assert_eq!(stack.stats().open.load(Ordering::Relaxed), 1);
    drop(socket);
    assert_eq!(
        stack.stats().open.load(Ordering::Relaxed),
        0,
        "dropped at once"
    );
}
