//! A network namespace joined to this machine by a veth pair, to cut a node off the network in
//! a test: its processes reach the stack only through the link, and taking the link down is a
//! real network partition (packets vanish, connections hang), not a clean close. Needs root and
//! iproute2; removed (namespace and link) on drop.

use std::process::Command;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The address of this machine's end of the link; the test NATS server's certificate names it.
pub const HOST_ADDR: &str = "10.213.7.1";
/// The namespace's end.
pub const NS_ADDR: &str = "10.213.7.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may make namespaces (it runs as root).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A namespace with one link to this machine.
pub struct NetNs {
    name: String,
    host_if: String,
    forwards: Vec<JoinHandle<()>>,
}

impl NetNs {
    /// Make the namespace and its link, both up.
    pub fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let ns = Self {
            name: format!("gantry-test-{id}"),
            host_if: format!("gt{id}h"),
            forwards: Vec::new(),
        };
        let ns_if = format!("gt{id}n");
        // Left over by a test process that was killed: start clean.
        let _ = ip(&["link", "del", &ns.host_if]);
        let _ = ip(&["netns", "del", &ns.name]);
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{HOST_ADDR}/30"),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{NS_ADDR}/30"), "dev", &ns_if])?;
        inside(&["link", "set", &ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// Forward `HOST_ADDR:<new port>` (reachable from inside) to `127.0.0.1:port` here; the new
    /// port.
    pub async fn forward(&mut self, port: u16) -> u16 {
        let listener = TcpListener::bind((HOST_ADDR, 0)).await.unwrap();
        let outer = listener.local_addr().unwrap().port();
        self.forwards.push(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        outer
    }

    /// Take the link down: the namespace is cut off.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).expect("take the link down");
    }

    /// Bring the link back.
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]).expect("bring the link up");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for f in &self.forwards {
            f.abort();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
