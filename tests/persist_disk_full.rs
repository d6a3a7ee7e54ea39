//! Disk full: writes fail with a clear `SERVER_ERROR` (reads keep working), the
//! failure is counted in `stats`, writes work again once space is freed, and
//! nothing acknowledged is lost, before or after a restart.
//!
//! As root the data directory lives on a small tmpfs (real `ENOSPC`), filled up
//! with a filler file that is deleted to "free space". Without root the daemon
//! runs under a file-size limit (`RLIMIT_FSIZE`, real `EFBIG` from the kernel on
//! sled's writes) which the test lifts with `prlimit` to recover
//! (`MEMTWIN_TEST_FSIZE=1` selects that variant as root too).

mod common;

use common::{tempdir, Client, Daemon};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNAVAILABLE: &str = "SERVER_ERROR unable to persist write";

/// How the disk is made to fail and recover.
enum Fault {
    Tmpfs { mnt: PathBuf, filler: PathBuf },
    FileSizeLimit,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mount_tmpfs(mnt: &Path, size: &str) -> bool {
    std::fs::create_dir_all(mnt).expect("mkdir");
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts the test's tmpfs when dropped; declared before the daemon so the
/// daemon (holding files on it) is gone first, with a lazy unmount as fallback.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs writes into the zeroed struct we pass.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

fn spawn_limited(port: u16, dir: &Path, args: &[&str], fsize: u64) -> Daemon {
    let log = dir.with_extension(format!("{port}.log"));
    let logf = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new(common::BIN);
    cmd.args([
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-l",
        "127.0.0.1",
        "--data-dir",
    ])
    .arg(dir)
    .args(args)
    .stdout(Stdio::null())
    .stderr(logf);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: fsize,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn");
    let mut d = Daemon::from_child(child, port, dir, log);
    d.wait_ready();
    d
}

fn lift_limit(pid: u32) {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn disk_full_scenario(port: u16, fsync: &str) {
    let tmp = tempdir();
    let args = ["--fsync", fsync];
    let mnt = tmp.path().join("mnt");
    // MEMTWIN_TEST_FSIZE=1 forces the unprivileged variant (to test it as root).
    let tmpfs = is_root() && std::env::var_os("MEMTWIN_TEST_FSIZE").is_none();
    let mounted = tmpfs && mount_tmpfs(&mnt, "40m");
    // Dropped after every daemon below (locals drop in reverse order).
    let _unmount = mounted.then(|| Unmount(mnt.clone()));
    let (d, fault) = if mounted {
        let dir = mnt.join("data");
        let d = Daemon::start(port, &dir, &args);
        // Leave ~3 MiB free.
        let filler = mnt.join("filler");
        let free = free_bytes(&mnt);
        let f = std::fs::File::create(&filler).expect("filler");
        f.set_len(0).expect("len");
        use std::io::Write;
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![0u8; 1 << 20];
        let mut left = free.saturating_sub(3 << 20);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).expect("fill");
            left -= n as u64;
        }
        w.flush().expect("flush");
        drop(w);
        (
            d,
            Fault::Tmpfs {
                mnt: mnt.clone(),
                filler,
            },
        )
    } else {
        eprintln!("not root or no tmpfs: emulating a full disk with RLIMIT_FSIZE");
        let dir = tmp.path().join("data");
        (
            spawn_limited(port, &dir, &args, 6 << 20),
            Fault::FileSizeLimit,
        )
    };
    let dir = d.dir.clone();

    // Write 10 KiB sessions until the disk refuses.
    let value = |i: usize| format!("{i:08}").repeat(1280).into_bytes();
    let mut acked: HashMap<String, Vec<u8>> = HashMap::new();
    let mut c = d.client();
    let mut refused = 0;
    let mut i = 0;
    let started = Instant::now();
    while refused < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60) && i < 20_000,
            "the disk never filled up ({i} writes):\n{}",
            d.log_text()
        );
        i += 1;
        let k = format!("sess{i}");
        match c.try_store("set", &k, 0, 0, &value(i)) {
            Ok(r) if r == "STORED" => {
                acked.insert(k, value(i));
            }
            Ok(r) => {
                assert_eq!(r, UNAVAILABLE);
                refused += 1;
            }
            // fsync=always: a write whose fsync failed gets no reply at all.
            Err(_) => c = d.client(),
        }
    }
    assert!(
        acked.len() > 50,
        "some writes succeeded before the disk filled"
    );
    // Deletes and incr are refused the same way; reads keep working.
    let some = acked.keys().next().cloned().expect("a key");
    assert_eq!(c.cmd(&format!("delete {some}")), UNAVAILABLE);
    assert_eq!(
        c.get(&some).as_ref(),
        acked.get(&some),
        "reads keep working"
    );
    let st = c.stats();
    assert_eq!(st["memtwin_persist_healthy"], "0");
    assert!(
        st["memtwin_persist_write_errors"]
            .parse::<u64>()
            .expect("n")
            > 0
    );
    assert!(
        d.log_text().contains("writes are refused"),
        "{}",
        d.log_text()
    );

    // Free the space: writes work again, on their own.
    match &fault {
        Fault::Tmpfs { filler, .. } => std::fs::remove_file(filler).expect("rm filler"),
        Fault::FileSizeLimit => lift_limit(d.child.id()),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.try_store("set", "after", 0, 0, b"recovered") {
            Ok(r) if r == "STORED" => break,
            Ok(r) => assert_eq!(r, UNAVAILABLE),
            Err(_) => c = d.client(),
        }
        assert!(Instant::now() < deadline, "no recovery:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.stat("memtwin_persist_healthy"), "1");
    assert!(d.log_text().contains("writable again"), "{}", d.log_text());
    for j in 0..50 {
        let k = format!("late{j}");
        assert_eq!(c.set(&k, 0, 0, &value(j)), "STORED");
        acked.insert(k, value(j));
    }
    acked.insert("after".into(), b"recovered".to_vec());
    check_all(&mut c, &acked, "after recovery");
    drop(c);

    // Nothing acknowledged is lost across a clean restart, nor a crash.
    d.stop();
    let d = Daemon::start(port, &dir, &args);
    check_all(&mut d.client(), &acked, "after restart");
    let mut c = d.client();
    assert_eq!(c.set("last", 0, 0, b"x"), "STORED");
    acked.insert("last".into(), b"x".to_vec());
    drop(c);
    if fsync == "always" {
        d.kill9();
    } else {
        d.stop();
    }
    let d = Daemon::start(port, &dir, &args);
    check_all(&mut d.client(), &acked, "after crash");
    d.stop();
    if let Fault::Tmpfs { mnt, .. } = fault {
        eprintln!("tmpfs free at the end: {} KiB", free_bytes(&mnt) >> 10);
    }
}

fn check_all(c: &mut Client, acked: &HashMap<String, Vec<u8>>, when: &str) {
    let keys: Vec<String> = acked.keys().cloned().collect();
    for chunk in keys.chunks(100) {
        let got = c.try_gets_many(chunk).expect("gets");
        for k in chunk {
            assert_eq!(
                got.get(k).map(|v| &v.1),
                acked.get(k),
                "{when}: acknowledged {k} lost"
            );
        }
    }
}

#[test]
fn disk_full_with_fsync_always() {
    disk_full_scenario(common::free_port(), "always");
}

#[test]
fn disk_full_with_fsync_everysec() {
    disk_full_scenario(common::free_port(), "everysec");
}
