//! Attacks between principals' host processes through what a kernel shares by default, with
//! real children under per-principal uids: a file in `/tmp`, `/var/tmp` or `/dev/shm`, an
//! abstract-namespace unix socket, a loopback TCP listener, a symbolic link planted in `/tmp`
//! for another principal to follow (this machine's `protected_symlinks` is off). On a root
//! host every child has its own scratch places, IPC and (without a network grant) network, so
//! none of these reach from one principal's child to another's, nor to the host; a child
//! cannot remount or unshare its way back to the host's. A root host whose kernel refuses
//! the namespaces refuses to spawn (asserted where that is the case); a host that is not root
//! runs every child as its own user, sharing all of it, as documented, and that is asserted
//! instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_runtime::Capsule;
use capsule_runtime::process::namespaces_available;
use serde_json::{Value, json};

use crate::common::{Host, err, host, ok};
use crate::process::call;
use crate::process_uids::{GRANTS, root, uid_host, uid_of};

/// How this host runs children.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A root host: namespaces of their own.
    Isolated,
    /// A root host whose kernel refuses the namespaces: every spawn is refused.
    Refused,
    /// A host that is not root: every child shares the host's user, scratch and network.
    Shared,
}

fn mode() -> Mode {
    match (root(), namespaces_available()) {
        (false, _) => Mode::Shared,
        (true, true) => Mode::Isolated,
        (true, false) => Mode::Refused,
    }
}

/// A unique word for this run's names.
fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

async fn load(h: &Host, name: &str, extra: &str) -> Capsule {
    h.approve_all();
    h.load(name, "proc-runner.wasm", &format!("{GRANTS}{extra}"))
        .await
}

async fn sh(c: &Capsule, who: &str, script: &str) -> Value {
    call(
        c,
        "spawn",
        json!({"cmd": "/bin/sh", "args": ["-c", script]}),
        who,
    )
    .await
}

fn stdout(r: &Value) -> String {
    ok(r)["stdout"].as_str().unwrap_or_default().to_string()
}

/// Starts `script` as a persistent child of `who` and returns its id and pid.
async fn persist(c: &Capsule, who: &str, script: &str) -> (String, u64) {
    let r = call(
        c,
        "persist",
        json!({"cmd": "/bin/sh", "args": ["-c", script]}),
        who,
    )
    .await;
    let id = ok(&r)
        .as_str()
        .unwrap_or_else(|| panic!("no id in {r}"))
        .to_string();
    let s = call(c, "status", json!({"id": id}), who).await;
    let pid = ok(&s)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {s}"));
    (id, pid)
}

/// Waits (bounded) until `done` holds; a child that never gets there fails the test.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the host sees of `path` inside the child `pid`'s own view of the file system.
fn in_child(pid: u64, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// A spawn on a root host that cannot create namespaces is refused, naming why.
/// The runner loaded on `h`, or `None` on a root host whose kernel refuses namespaces, after
/// checking that it refuses every spawn (and unloading it).
async fn load_or_refused(h: &Host, name: &str, extra: &str) -> Option<Capsule> {
    let c = load(h, name, extra).await;
    if mode() != Mode::Refused {
        return Some(c);
    }
    assert_refused(&c).await;
    c.unload().await;
    None
}

async fn assert_refused(c: &Capsule) {
    let r = sh(c, "alice", "true").await;
    let e = err(&r);
    assert!(e.starts_with("unknown:") && e.contains("namespaces"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principals_scratch_files_are_out_of_reach_of_other_principals_and_the_host() {
    let h = uid_host(3_101_000..=3_101_009);
    let Some(c) = load_or_refused(&h, "runner", "").await else {
        return;
    };
    let t = tag();
    // A file the host keeps in its own /tmp, which no child should see.
    let host_file = PathBuf::from(format!("/tmp/capsule-ns-host-{t}"));
    std::fs::write(&host_file, "host only").unwrap_or_else(|e| panic!("{e}"));
    let (id, pid) = persist(
        &c,
        "alice",
        &format!(
            "umask 0; for d in /tmp /var/tmp /dev/shm; do echo alice > $d/a-{t}; done; \
             ls /tmp > seen-{t}; exec sleep 1000"
        ),
    )
    .await;
    let made = in_child(pid, &format!("/dev/shm/a-{t}"));
    wait_until("alice's child wrote its files", || made.exists()).await;
    let seen = std::fs::read_to_string(h.state().join("home/alice").join(format!("seen-{t}")))
        .unwrap_or_default();
    let probe = format!(
        "for d in /tmp /var/tmp /dev/shm; do cat $d/a-{t}; done; cat /tmp/capsule-ns-host-{t}; \
         echo done"
    );
    let bob = stdout(&sh(&c, "bob", &probe).await);
    let alice_again = stdout(&sh(&c, "alice", &probe).await);
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        let on_host = Path::new(dir).join(format!("a-{t}"));
        if mode() == Mode::Isolated {
            assert!(!on_host.exists(), "{} reached the host", on_host.display());
        }
        let _ = std::fs::remove_file(on_host);
    }
    let _ = std::fs::remove_file(&host_file);
    match mode() {
        Mode::Isolated => {
            assert_eq!(bob, "done\n", "bob's child saw alice's or the host's files");
            assert_eq!(
                alice_again, "done\n",
                "scratch space is each child's own, also between one principal's children"
            );
            assert!(!seen.contains("capsule-ns-host"), "{seen}");
        }
        // The documented fallback: one user, one /tmp for everybody.
        Mode::Shared => assert!(
            bob.contains("alice\n") && bob.contains("host only"),
            "{bob}"
        ),
        Mode::Refused => unreachable!(),
    }
    ok(&call(&c, "stop", json!({"id": id}), "alice").await);
    c.unload().await;
}

/// Perl (part of every Debian-like base system) binds an abstract-namespace socket and a
/// loopback TCP port, checks it reaches both itself, and stays.
fn listener(name: &str, port: u16) -> String {
    format!(
        "exec /usr/bin/perl -e 'use Socket; $|=1;
         socket(my $u, AF_UNIX, SOCK_STREAM, 0) or die;
         bind($u, pack_sockaddr_un(\"\\0{name}\")) or die \"unix $!\"; listen($u, 5) or die;
         socket(my $t, AF_INET, SOCK_STREAM, 0) or die;
         bind($t, pack_sockaddr_in({port}, inet_aton(\"127.0.0.1\"))) or die \"tcp $!\";
         listen($t, 5) or die;
         socket(my $x, AF_UNIX, SOCK_STREAM, 0); socket(my $y, AF_INET, SOCK_STREAM, 0);
         print connect($x, pack_sockaddr_un(\"\\0{name}\")) ? \"self-unix\\n\" : \"no-unix\\n\";
         print connect($y, pack_sockaddr_in({port}, inet_aton(\"127.0.0.1\"))) ? \"self-tcp\\n\" : \"no-tcp\\n\";
         sleep 1000'"
    )
}

/// Perl tries to reach the abstract socket `name` and the loopback port `port`, printing what
/// it reached.
fn dialer(name: &str, port: u16) -> String {
    format!(
        "/usr/bin/perl -e 'use Socket;
         socket(my $x, AF_UNIX, SOCK_STREAM, 0) or die; socket(my $y, AF_INET, SOCK_STREAM, 0) or die;
         print connect($x, pack_sockaddr_un(\"\\0{name}\")) ? \"reached-unix\\n\" : \"no-unix\\n\";
         print connect($y, pack_sockaddr_in({port}, inet_aton(\"127.0.0.1\"))) ? \"reached-tcp\\n\" : \"no-tcp\\n\";'"
    )
}

/// A loopback port free on the host now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the host reaches the abstract socket `name` and the loopback port `port`.
fn host_reaches(name: &str, port: u16) -> (bool, bool) {
    use std::os::linux::net::SocketAddrExt;
    let unix = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
        .is_ok();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    (unix, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_socket_or_loopback_port_of_one_principals_child_reaches_no_one_else() {
    let h = uid_host(3_101_100..=3_101_109);
    let Some(c) = load_or_refused(&h, "runner", "").await else {
        return;
    };
    let name = format!("capsule-ns-{}", tag());
    let port = free_port();
    let (id, pid) = persist(&c, "alice", &listener(&name, port)).await;
    // The listener is up once its own network namespace lists the socket.
    let unix_table = PathBuf::from(format!("/proc/{pid}/net/unix"));
    let needle = format!("@{name}");
    wait_until("alice's child listens", || {
        std::fs::read_to_string(&unix_table).is_ok_and(|t| t.contains(&needle))
    })
    .await;
    let bob = stdout(&sh(&c, "bob", &dialer(&name, port)).await);
    let alice_again = stdout(&sh(&c, "alice", &dialer(&name, port)).await);
    let host = host_reaches(&name, port);
    let logs = call(&c, "read-logs", json!({"id": id}), "alice").await;
    let own = ok(&logs)["stdout"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        own, "self-unix\nself-tcp\n",
        "a child reaches its own listeners"
    );
    match mode() {
        Mode::Isolated => {
            assert_eq!(bob, "no-unix\nno-tcp\n", "bob's child reached alice's");
            assert_eq!(
                alice_again, "no-unix\nno-tcp\n",
                "each child has its own network"
            );
            assert_eq!(host, (false, false), "the host's network holds none of it");
        }
        Mode::Shared => {
            assert_eq!(bob, "reached-unix\nreached-tcp\n");
            assert_eq!(host, (true, true));
        }
        Mode::Refused => unreachable!(),
    }
    ok(&call(&c, "stop", json!({"id": id}), "alice").await);
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_own_abstract_sockets_and_ports_are_out_of_reach_without_a_network_grant() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("capsule-ns-host-{}", tag());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let unix = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = tcp
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let h = uid_host(3_101_200..=3_101_209);
    let plain = load(&h, "plain", "").await;
    // A capsule granted network keeps the host's network for its children, as documented:
    // what they reach there is governed by the host's own firewall, not by the runtime.
    let netted = load(&h, "netted", "net_connect = [\"127.0.0.1:1\"]\n").await;
    if mode() == Mode::Refused {
        assert_refused(&plain).await;
        assert_refused(&netted).await;
        plain.unload().await;
        netted.unload().await;
        return;
    }
    let without = stdout(&sh(&plain, "bob", &dialer(&name, port)).await);
    let with = stdout(&sh(&netted, "bob", &dialer(&name, port)).await);
    match mode() {
        Mode::Isolated => assert_eq!(without, "no-unix\nno-tcp\n"),
        Mode::Shared => assert_eq!(without, "reached-unix\nreached-tcp\n"),
        Mode::Refused => unreachable!(),
    }
    assert_eq!(
        with, "reached-unix\nreached-tcp\n",
        "a granted network still works"
    );
    drop((unix, tcp));
    plain.unload().await;
    netted.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_planted_in_tmp_by_one_principal_is_not_followed_by_another() {
    let h = uid_host(3_101_300..=3_101_309);
    let Some(c) = load_or_refused(&h, "runner", "").await else {
        return;
    };
    let t = tag();
    // Bob plants a link where alice's program writes, leading to a file he can read back.
    let plant = sh(
        &c,
        "bob",
        &format!(
            "ln -s /tmp/drop-{t} /tmp/report-{t} && ln -s /var/tmp/drop-{t} /var/tmp/report-{t}"
        ),
    )
    .await;
    assert_eq!(ok(&plant)["exit"]["code"], 0, "{plant}");
    let wrote = sh(
        &c,
        "alice",
        &format!("echo alices-secret > /tmp/report-{t}; echo alices-secret > /var/tmp/report-{t}"),
    )
    .await;
    assert_eq!(ok(&wrote)["exit"]["code"], 0, "{wrote}");
    let took = stdout(&sh(&c, "bob", &format!("cat /tmp/drop-{t} /var/tmp/drop-{t}")).await);
    for dir in ["/tmp", "/var/tmp"] {
        for f in ["drop", "report"] {
            let p = Path::new(dir).join(format!("{f}-{t}"));
            if mode() == Mode::Isolated {
                assert!(std::fs::symlink_metadata(&p).is_err(), "{}", p.display());
            }
            let _ = std::fs::remove_file(p);
        }
    }
    match mode() {
        Mode::Isolated => assert_eq!(took, "", "bob read what alice wrote through his link"),
        Mode::Shared => assert!(took.contains("alices-secret"), "{took}"),
        Mode::Refused => unreachable!(),
    }
    c.unload().await;
}

/// Lines of `/proc/self/status` a child reports about its privileges.
const PRIVILEGES: &str =
    "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_can_neither_remount_nor_unshare_its_way_back_to_the_hosts_places() {
    let t = tag();
    let host_file = PathBuf::from(format!("/tmp/capsule-ns-escape-{t}"));
    std::fs::write(&host_file, "host only").unwrap_or_else(|e| panic!("{e}"));
    // With a uid of its own, and as the host's root user without capabilities.
    for (h, who) in [(uid_host(3_101_400..=3_101_409), "uid"), (host(), "root")] {
        let Some(c) = load_or_refused(&h, "runner", "").await else {
            continue;
        };
        let privs = sh(&c, "alice", PRIVILEGES).await;
        if who == "root" && privs.get("err").is_some() {
            // A root host without a pids cgroup and without uids refuses every spawn, as
            // documented (Host processes); there is no child to attack from.
            assert!(err(&privs).contains("process-count"), "{privs}");
            c.unload().await;
            continue;
        }
        let privs = stdout(&privs);
        if mode() == Mode::Isolated {
            assert_eq!(
                privs,
                "CapInh: 0000000000000000\nCapPrm: 0000000000000000\n\
                 CapEff: 0000000000000000\nCapBnd: 0000000000000000\n\
                 CapAmb: 0000000000000000\nNoNewPrivs: 1\n",
                "{who}"
            );
        }
        let needle = format!("capsule-ns-escape-{t}");
        for attempt in [
            "umount /tmp; umount -l /tmp; ls /tmp".to_string(),
            "mount -t tmpfs x /tmp; mount --bind / /mnt && ls /mnt/tmp; ls /tmp".to_string(),
            // A user namespace of its own gives capabilities only over mounts it made: the
            // host's /tmp stays covered, locked to the tmpfs above it.
            "unshare -U -r -m sh -c 'umount /tmp; umount -l /tmp; ls /tmp'".to_string(),
            "unshare -U -r -m -n sh -c 'umount -R /tmp; ls /tmp'".to_string(),
            "nsenter -t 1 -m -n ls /tmp".to_string(),
            "ls /proc/1/root/tmp".to_string(),
            format!("ls /proc/{}/root/tmp", std::process::id()),
        ] {
            let r = sh(&c, "alice", &attempt).await;
            let out = stdout(&r);
            match mode() {
                Mode::Isolated => assert!(!out.contains(&needle), "{who}: {attempt}: {r}"),
                Mode::Shared | Mode::Refused => {}
            }
        }
        if mode() == Mode::Shared {
            let r = sh(&c, "alice", "ls /tmp").await;
            assert!(
                stdout(&r).contains(&needle),
                "the documented fallback shares /tmp"
            );
        }
        c.unload().await;
    }
    let _ = std::fs::remove_file(&host_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_under_the_hosts_tmp_keeps_its_path_and_nothing_else_of_the_state_shows() {
    let h = uid_host(3_101_500..=3_101_509);
    let Some(c) = load_or_refused(&h, "runner", "").await else {
        return;
    };
    let alice = uid_of(&c, "alice").await;
    uid_of(&c, "bob").await;
    let home = h.state().join("home/alice");
    let bob_home = h.state().join("home/bob");
    std::fs::write(bob_home.join("bobs.txt"), "bob").unwrap_or_else(|e| panic!("{e}"));
    let r = sh(
        &c,
        "alice",
        &format!(
            "echo mine > {0}/abs.txt && cat {0}/abs.txt && [ \"$(pwd)\" = {0} ] && echo same; \
             ls {1}; ls {2}",
            home.display(),
            bob_home.display(),
            h.state().display()
        ),
    )
    .await;
    let out = stdout(&r);
    assert!(out.starts_with("mine\nsame\n"), "{r}");
    if mode() == Mode::Isolated {
        assert!(!out.contains("bobs.txt") && !out.contains("kv.redb"), "{r}");
        // What the child wrote by its absolute path is in the real home.
        let m = std::fs::metadata(home.join("abs.txt")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u64::from(std::os::unix::fs::MetadataExt::uid(&m)), alice);
    }
    c.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_on_the_hosts_network_is_not_handed_to_a_reload_without_a_network_grant() {
    let h = uid_host(3_101_700..=3_101_709);
    let Some(c) = load_or_refused(&h, "runner", "net_connect = [\"127.0.0.1:1\"]\n").await else {
        return;
    };
    let (id, pid) = persist(&c, "alice", "exec sleep 1000").await;
    // The new version drops the network grant: the child, on the host's network, dies.
    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.2.0", GRANTS);
    let c2 =
        h.rt.reload("runner", &dir)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let s = call(&c2, "status", json!({"id": id}), "alice").await;
    assert_eq!(err(&s), "no-such-process", "{s}");
    assert!(crate::process::gone(pid), "the child outlived the reload");
    // A child started without the grant is handed over as before.
    let (kept, _) = persist(&c2, "alice", "exec sleep 1000").await;
    let dir = h.capsule_dir_at("runner", "proc-runner.wasm", "0.3.0", GRANTS);
    let c3 =
        h.rt.reload("runner", &dir)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let s = call(&c3, "status", json!({"id": kept}), "alice").await;
    assert_eq!(ok(&s)["running"], true, "{s}");
    assert!(h.rt.unload("runner").await);
}
