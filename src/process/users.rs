//! User and group lookup from `/etc/passwd` and `/etc/group`.
//!
//! execd is a static binary that must run in images without NSS, or without
//! these files at all, so it reads them directly and treats a missing file as
//! empty.

/// What a command running as `uid` needs to know about its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
}

/// Looks up `uid` in a passwd file's text. Unknown uids get `gid = uid`
/// (not 0: a uid without an entry must not gain root's group).
pub fn user_by_uid(passwd: &str, uid: u32) -> UserInfo {
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[2].parse::<u32>().ok() != Some(uid) {
            continue;
        }
        return UserInfo {
            name: Some(f[0].to_string()),
            uid,
            gid: f[3].parse().unwrap_or(uid),
            home: Some(f[5].to_string()).filter(|h| !h.is_empty()),
        };
    }
    UserInfo {
        name: None,
        uid,
        gid: uid,
        home: None,
    }
}

/// What a process switched to `uid` runs with: the uid, the gid (the
/// given one, else the passwd entry's, else the uid) and the supplementary
/// groups (the user's when the gid is its primary one, else the gid alone).
pub fn credentials(uid: u32, gid: Option<u32>) -> (u32, u32, Vec<u32>) {
    let user = user_by_uid(&read_db("/etc/passwd"), uid);
    let gid = gid.unwrap_or(user.gid);
    let groups = if gid == user.gid {
        groups_of(&read_db("/etc/group"), user.name.as_deref(), gid)
    } else {
        vec![gid]
    };
    (uid, gid, groups)
}

/// Supplementary groups of user `name` (from a group file's text), plus `primary`.
pub fn groups_of(group: &str, name: Option<&str>, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    if let Some(name) = name {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == name) {
                continue;
            }
            if let Ok(gid) = f[2].parse::<u32>() {
                if !out.contains(&gid) {
                    out.push(gid);
                }
            }
        }
    }
    out
}

/// Name of `id` in a passwd or group file's text (first field, matched on the third).
pub fn name_by_id(text: &str, id: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_string())
    })
}

/// Id of `name` in a passwd or group file's text (third field, matched on the first).
pub fn id_by_name(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        let _pw = f.next()?;
        f.next()?.parse().ok()
    })
}

/// Reads a system file, treating absence or unreadability as empty.
pub fn read_db(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\ndocker:x:999:bob\nalice:x:1000:\n";

    #[test]
    fn known_user() {
        let u = user_by_uid(PASSWD, 1000);
        assert_eq!(u.name.as_deref(), Some("alice"));
        assert_eq!(u.gid, 1000);
        assert_eq!(u.home.as_deref(), Some("/home/alice"));
        assert_eq!(groups_of(GROUP, u.name.as_deref(), u.gid), vec![1000, 10]);
    }

    #[test]
    fn unknown_user_gets_own_gid() {
        let u = user_by_uid(PASSWD, 4242);
        assert_eq!((u.name, u.gid, u.home), (None, 4242, None));
        assert_eq!(groups_of(GROUP, None, 4242), vec![4242]);
        assert_eq!(user_by_uid("", 0).gid, 0);
    }

    #[test]
    fn names() {
        assert_eq!(name_by_id(PASSWD, 0).as_deref(), Some("root"));
        assert_eq!(name_by_id(GROUP, 999).as_deref(), Some("docker"));
        assert_eq!(name_by_id(GROUP, 5), None);
        assert_eq!(id_by_name(PASSWD, "alice"), Some(1000));
        assert_eq!(id_by_name(GROUP, "docker"), Some(999));
        assert_eq!(id_by_name(GROUP, "nobody"), None);
    }
}
