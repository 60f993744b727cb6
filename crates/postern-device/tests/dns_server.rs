//! The DNS server over real sockets on loopback: names of DNS resources answered by the stub
//! resolver itself, every other query forwarded as it is (EDNS included) to an upstream, over
//! UDP and over TCP, and SERVFAIL when no upstream answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use postern_device::dns_server::{serve, DnsServer, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use uuid::Uuid;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1400);
    message.set_edns(edns);
    message.to_vec().unwrap()
}

/// The answer an upstream gives: 192.0.2.7, and whether the query still carried EDNS.
fn upstream_answer(request: &[u8]) -> Vec<u8> {
    let request = Message::from_vec(request).unwrap();
    let mut answer = Message::new();
    answer
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .add_queries(request.queries().iter().cloned());
    let code = match request.extensions() {
        Some(edns) if edns.max_payload() == 1400 => ResponseCode::NoError,
        _ => ResponseCode::Refused,
    };
    answer.set_response_code(code);
    let name = request.queries()[0].name().clone();
    answer.add_answer(Record::from_rdata(name, 60, RData::A(A(UPSTREAM_ANSWER))));
    answer.to_vec().unwrap()
}

/// An upstream resolver on UDP and TCP of one loopback port.
async fn upstream() -> SocketAddr {
    // The port UDP got may be taken for TCP by another test: try another.
    let mut tries = 0;
    let (udp, at, tcp) = loop {
        let udp = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
        let at = udp.local_addr().unwrap();
        match TcpListener::bind(at).await {
            Ok(tcp) => break (udp, at, tcp),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => tries += 1,
            Err(err) => panic!("upstream on {at}: {err}"),
        }
    };
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((len, from)) = udp.recv_from(&mut buffer).await {
            let _ = udp.send_to(&upstream_answer(&buffer[..len]), from).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let len = usize::from(stream.read_u16().await.unwrap());
                let mut request = vec![0u8; len];
                stream.read_exact(&mut request).await.unwrap();
                let answer = upstream_answer(&request);
                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                stream.write_all(&framed).await.unwrap();
            });
        }
    });
    at
}

async fn server(upstreams: Vec<SocketAddr>) -> (Arc<DnsServer>, SocketAddr) {
    let server = Arc::new(DnsServer::new(upstreams));
    server
        .resolver
        .write()
        .set_resources([(Uuid::from_u128(1), "*.svc.internal.test")]);
    let listeners = Listeners::bind(&[LOOPBACK], 0).await.unwrap();
    let at = listeners.addresses()[0];
    tokio::spawn(serve(listeners, server.clone()));
    (server, at)
}

async fn ask_udp(at: SocketAddr, name: &str, id: u16) -> Message {
    let socket = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    socket.send_to(&query(name, id), at).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

async fn ask_tcp(at: SocketAddr, names: &[&str]) -> Vec<Message> {
    let mut stream = TcpStream::connect(at).await.unwrap();
    let mut answers = Vec::new();
    for (id, name) in names.iter().enumerate() {
        let request = query(name, id as u16);
        let mut framed = (request.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&request);
        stream.write_all(&framed).await.unwrap();
        let len = usize::from(stream.read_u16().await.unwrap());
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await.unwrap();
        answers.push(Message::from_vec(&answer).unwrap());
    }
    answers
}

fn first_a(message: &Message) -> Option<Ipv4Addr> {
    message.answers().iter().find_map(|r| match r.data() {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

#[tokio::test]
async fn resource_names_are_answered_here_and_others_forwarded_as_they_are_over_udp_and_tcp() {
    let (server, at) = server(vec![upstream().await]).await;

    let own = ask_udp(at, "db.svc.internal.test.", 7).await;
    assert_eq!(own.id(), 7);
    assert_eq!(first_a(&own), Some(Ipv4Addr::new(198, 18, 1, 0)));
    let forwarded = ask_udp(at, "example.com.", 8).await;
    assert_eq!(forwarded.id(), 8);
    assert_eq!(
        forwarded.response_code(),
        ResponseCode::NoError,
        "EDNS reached the upstream"
    );
    assert_eq!(first_a(&forwarded), Some(UPSTREAM_ANSWER));

    let over_tcp = ask_tcp(at, &["web.svc.internal.test.", "example.org."]).await;
    assert_eq!(first_a(&over_tcp[0]), Some(Ipv4Addr::new(198, 18, 1, 1)));
    assert_eq!(first_a(&over_tcp[1]), Some(UPSTREAM_ANSWER));

    assert_eq!(server.answered.load(Ordering::Relaxed), 2);
    assert_eq!(server.forwarded.load(Ordering::Relaxed), 2);
    assert!(server.names_changed.load(Ordering::Relaxed));
}

#[tokio::test]
async fn without_an_upstream_that_answers_a_forwarded_query_gets_servfail() {
    // A port nothing listens on, then none at all.
    let silent = UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let nowhere = silent.local_addr().unwrap();
    drop(silent);
    let (server, at) = server(vec![nowhere]).await;
    let failed = ask_udp(at, "example.com.", 9).await;
    assert_eq!(
        (failed.id(), failed.response_code()),
        (9, ResponseCode::ServFail)
    );
    server.set_upstreams(Vec::new());
    let failed = ask_tcp(at, &["example.net."]).await;
    assert_eq!(failed[0].response_code(), ResponseCode::ServFail);
    assert_eq!(server.failed.load(Ordering::Relaxed), 2);

    // Upstreams change while it runs (the client's full tunnel moves them to its gateway).
    server.set_upstreams(vec![upstream().await]);
    assert_eq!(
        first_a(&ask_udp(at, "example.com.", 10).await),
        Some(UPSTREAM_ANSWER)
    );
}
