//! `plain-app ADDR [MARKER]`: an app as many real ones are — plain HTTP,
//! listening on loopback only — for the tests that check swarm judges an
//! agent by its release's own `health_url`. Answers every request 200
//! `ok`; prints `MARKER` (default `plain-app listening`) on stdout once it
//! listens, and `plain-app request` for every request it serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: plain-app ADDR [MARKER]");
        std::process::exit(2);
    };
    let marker = args
        .next()
        .unwrap_or_else(|| "plain-app listening".to_owned());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plain-app: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("{marker}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(clone) = stream.try_clone() else {
                return;
            };
            // Read the request head (bounded), then answer.
            let mut reader = BufReader::new(clone).take(64 * 1024);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            println!("plain-app request");
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            );
        });
    }
}
