//! CPU accounting from /proc, to attribute CPU time to the server under test,
//! the generator, and everything else on the machine ("foreign" load).

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all threads), in seconds; `None` if it is gone.
pub fn process_cpu(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

/// Busy seconds (everything but idle and iowait) of the whole machine and of
/// each CPU, from /proc/stat.
pub fn system_busy() -> (f64, Vec<f64>) {
    let tck = clk_tck();
    let mut total = 0.0;
    let mut per = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/proc/stat") {
        for line in s.lines() {
            if !line.starts_with("cpu") {
                break;
            }
            let mut it = line.split_whitespace();
            let name = it.next().unwrap_or("");
            let v: Vec<f64> = it.filter_map(|x| x.parse().ok()).collect();
            if v.len() < 8 {
                continue;
            }
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tck;
            if name == "cpu" {
                total = busy;
            } else {
                per.push(busy);
            }
        }
    }
    (total, per)
}

/// CPU seconds used by this process so far (all threads).
pub fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
