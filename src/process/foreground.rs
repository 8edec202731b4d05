//! The foreground jobs of terminals inside a process tree, and a ^C for
//! those that provably never got one.
//!
//! A kernel that interrupts by typing ^C into a terminal of its own
//! (bash_kernel: its shell runs on a pty, in a session of its own) loses
//! the ^C when it lands after the shell forked the next command but before
//! it handed that command the terminal: the line discipline signals the
//! shell's group then, and the shell leaves a job in a group of its own to
//! the ^C it expects that job to get. The command runs on. A user at that
//! terminal would press ^C again; [`interrupt_unreached`] does that for the
//! processes that are sure not to have seen one: each member of a
//! terminal's foreground group (other than the session leader's own group)
//! whose SIGINT is at its default action (neither ignored nor caught) and
//! neither blocked nor pending. A SIGINT delivered to such a process ends
//! it, so one still alive never got one; a process that catches SIGINT may
//! have got the first ^C and is left alone, as is one that ignores it.

use std::collections::HashMap;

use super::tree::{Member, Tree};

/// What `/proc/<pid>/stat` says about a process's session and terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    pgrp: i32,
    session: i32,
    tty_nr: i32,
    tpgid: i32,
}

fn parse_stat(s: &str) -> Option<Stat> {
    // Fields after the command name (which may hold spaces and parentheses):
    // state ppid pgrp session tty_nr tpgid.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i32>().ok());
    Some(Stat {
        zombie: matches!(f.first(), Some(&"Z") | Some(&"X")),
        pgrp: num(2)?,
        session: num(3)?,
        tty_nr: num(4)?,
        tpgid: num(5)?,
    })
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `/proc/<pid>/status` shows SIGINT at its default action, not
/// blocked and not pending (private or shared).
fn sigint_untouched(status: &str) -> bool {
    const SIGINT_BIT: u64 = 1 << (libc::SIGINT - 1);
    let mut seen = 0;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !matches!(key, "SigPnd" | "ShdPnd" | "SigBlk" | "SigIgn" | "SigCgt") {
            continue;
        }
        let Ok(mask) = u64::from_str_radix(value.trim(), 16) else {
            return false;
        };
        if mask & SIGINT_BIT != 0 {
            return false;
        }
        seen += 1;
    }
    seen == 5
}

/// Sends SIGINT to every member of a terminal's foreground job in `tree`
/// that never got one (see the module's documentation): each session led
/// by a member of the tree, on a terminal, whose foreground group is not
/// the leader's own, and whose group's members (in the tree) all have
/// SIGINT untouched. Returns how many processes were signalled.
pub fn interrupt_unreached(tree: &Tree) -> usize {
    let members: Vec<(Member, Stat)> = tree
        .members()
        .into_iter()
        .filter_map(|m| stat(m.pid).map(|s| (m, s)))
        .filter(|(_, s)| !s.zombie)
        .collect();
    // The foreground group of each terminal session led from inside the tree.
    let mut foreground: HashMap<i32, i32> = HashMap::new();
    for (m, s) in &members {
        if m.pid == s.session && s.tty_nr != 0 && s.tpgid > 0 && s.tpgid != s.pgrp {
            foreground.insert(s.session, s.tpgid);
        }
    }
    let mut sent = 0;
    for (session, pgrp) in foreground {
        let job: Vec<Member> = members
            .iter()
            .filter(|(_, s)| s.session == session && s.pgrp == pgrp)
            .map(|(m, _)| *m)
            .collect();
        let untouched = |m: &Member| {
            std::fs::read_to_string(format!("/proc/{}/status", m.pid))
                .is_ok_and(|s| sigint_untouched(&s))
        };
        if job.is_empty() || !job.iter().all(untouched) {
            continue;
        }
        for m in job {
            tree.signal_member(m, libc::SIGINT);
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_name() {
        let s = "4242 (a) b (c)) S 4000 4242 4100 34817 4242 4194560 0 0";
        assert_eq!(
            parse_stat(s),
            Some(Stat {
                zombie: false,
                pgrp: 4242,
                session: 4100,
                tty_nr: 34817,
                tpgid: 4242,
            })
        );
        assert!(parse_stat("1 (x) Z 0 1 1 0 -1 0").is_some_and(|s| s.zombie));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sigint_masks() {
        let clean = "Name:\tsleep\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
                     SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n";
        assert!(sigint_untouched(clean));
        for key in ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"] {
            let with = clean.replace(
                &format!("{key}:\t0000000000000000"),
                &format!("{key}:\t0000000000000002"),
            );
            assert!(!sigint_untouched(&with), "{key}");
        }
        // Other signals do not matter (SIGTERM caught, SIGQUIT ignored).
        let other = clean
            .replace("SigCgt:\t0000000000000000", "SigCgt:\t0000000000004000")
            .replace("SigIgn:\t0000000000000000", "SigIgn:\t0000000000000004");
        assert!(sigint_untouched(&other));
        // A status without the masks is not taken as untouched.
        assert!(!sigint_untouched("Name:\tx\n"));
    }

    #[test]
    fn own_status_has_the_masks() {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        for key in ["SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:"] {
            assert_eq!(s.lines().filter(|l| l.starts_with(key)).count(), 1, "{key}");
        }
    }
}
