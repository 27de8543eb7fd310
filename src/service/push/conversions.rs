//! Conversions of older notification layouts, run at the first start of a newer schema
//! version, before requests are served (`schema/README.md`, history of versions 8 and 9).
//! Decoding the rows is service logic, so the services convert them rather than the store's
//! migration steps.

use std::collections::{btree_map::Entry, BTreeMap, HashMap, HashSet, VecDeque};

use super::notifications::{
    CountsTable, Notification, NotifiedEvent, NotifiedTable, RoomCounts, Unread,
};
use crate::{
    error::Result,
    store::{Batch, Store},
    table,
};

table!(
    /// Schema version 7 only: `(user_id, room_id, event position) → Unread`, one row per
    /// unread notification. Replaced by read marks; emptied by [`convert_unread_rows`] at the
    /// first start on version 8.
    LegacyUnreadTable: "unread", (String, String, u64) => Unread
);
table!(
    /// Schema versions 2–8: `(user_id, event position) → Notification`, one row per user an
    /// event notified. Replaced by [`NotifiedTable`] (one row per event); emptied by
    /// [`convert_notification_rows`] at the first start on version 9.
    LegacyNotificationsTable: "notifications", (String, u64) => Notification
);

/// Bounds one scan of a user's rows.
const MAX_UNREAD_ROWS: usize = 1_000_000;

/// Turns schema version 7's unread rows into read marks, one user per commit: their unread
/// rows go and the counts row of each of their rooms is rewritten with marks, so a crash
/// part-way leaves every user either converted or as they were. One walk over the user's
/// notifications serves all their rooms. Runs before the server takes requests. Returns the
/// rooms converted.
pub fn convert_unread_rows(store: &Store) -> Result<u64> {
    let mut converted = 0;
    // Bounded: every round deletes the unread rows of one user (up to MAX_UNREAD_ROWS).
    loop {
        let Some(((user, _, _), _)) = store
            .range::<LegacyUnreadTable>(None, false, 1)?
            .into_iter()
            .next()
        else {
            if converted > 0 {
                log::info!("unread counts: converted {converted} rooms to read marks");
            }
            return Ok(converted);
        };
        let rows = store.scan_prefix::<LegacyUnreadTable, _>(&(user.as_str(),), MAX_UNREAD_ROWS)?;
        let mut batch = Batch::new();
        // By room: the counts and the positions of its unread notifications.
        let mut rooms: HashMap<String, (RoomCounts, HashSet<u64>)> = HashMap::new();
        for ((_, room, sid), row) in &rows {
            batch.delete::<LegacyUnreadTable>(&(user.clone(), room.clone(), *sid));
            let (counts, unread) = rooms.entry(room.clone()).or_default();
            counts.add(*sid, row);
            unread.insert(*sid);
        }
        // A read notification after a room's oldest unread one was read by a read of its
        // thread (in version 7 a thread's read notifications come before its unread ones):
        // its thread's mark is the newest such position, past the newest unread one too.
        let from = rooms
            .values()
            .map(|(c, _)| c.marks.first)
            .min()
            .unwrap_or(0);
        walk_legacy(store, &user, from, MAX_UNREAD_ROWS, |sid, n| {
            if let Some((counts, unread)) = rooms.get_mut(&n.room_id) {
                if sid > counts.marks.first && !unread.contains(&sid) {
                    let mark = counts.marks.threads.entry(n.thread).or_insert(0);
                    *mark = (*mark).max(sid);
                }
            }
            Ok(true)
        })?;
        for (room, (counts, _)) in rooms {
            let key = (user.clone(), room);
            if counts.total().is_zero() {
                batch.delete::<CountsTable>(&key);
            } else {
                batch.put::<CountsTable>(&key, &counts);
            }
            converted += 1;
        }
        store.commit_blocking(batch)?;
    }
}

/// Calls `f` on the user's version-8 notification rows from position `from` on, oldest
/// first, a page at a time, until it answers `false` or `max` of them were walked.
fn walk_legacy(
    store: &Store,
    user: &str,
    from: u64,
    max: usize,
    mut f: impl FnMut(u64, Notification) -> Result<bool>,
) -> Result<()> {
    const PAGE: usize = 256;
    let mut next = Some(from);
    let mut walked = 0;
    while let Some(from) = next.filter(|_| walked < max) {
        let want = PAGE.min(max - walked);
        let key = (user.to_owned(), from);
        let rows = store.range_in_prefix::<LegacyNotificationsTable, _>(
            &(user,),
            Some(&key),
            false,
            want,
        )?;
        let short = rows.len() < want;
        for ((_, sid), n) in rows {
            walked += 1;
            next = sid.checked_add(1);
            if !f(sid, n)? || next.is_none() {
                return Ok(());
            }
        }
        if short {
            return Ok(());
        }
    }
    Ok(())
}

/// Turns schema version 8's notification rows (one per user an event notified) into one row
/// per event. Each round reads on for the users whose read rows are all converted, converts
/// every row up to the newest position all users were read to, and commits: the old rows of
/// those positions go in the batch that writes their events' rows, so a crash part-way
/// leaves each position either converted or as it was. Every row is read once; a round
/// holds about `round_rows` rows (16 per user at least). Runs before the server takes
/// requests. Returns the events converted.
pub fn convert_notification_rows(store: &Store) -> Result<u64> {
    /// Rows one round reads at most (over all users), bounding its memory.
    const ROUND_ROWS: usize = 20_000;
    convert_in_rounds(store, ROUND_ROWS)
}

fn convert_in_rounds(store: &Store, round_rows: usize) -> Result<u64> {
    /// One user's version-8 rows: those read and not yet converted (oldest first), and
    /// where reading goes on (`None`: every row was read).
    struct Cursor {
        user: String,
        rows: VecDeque<(u64, Notification)>,
        next: Option<u64>,
    }
    let mut cursors: Vec<Cursor> = legacy_users(store)?
        .into_iter()
        .map(|user| Cursor {
            user,
            rows: VecDeque::new(),
            next: Some(0),
        })
        .collect();
    let mut converted = 0;
    loop {
        cursors.retain(|c| !c.rows.is_empty() || c.next.is_some());
        if cursors.is_empty() {
            if converted > 0 {
                log::info!("notifications: converted those of {converted} events to one row each");
            }
            return Ok(converted);
        }
        // Users with rows left to read share the round; one with many rows (the others
        // done) gets bigger reads.
        let reading = cursors.iter().filter(|c| c.next.is_some()).count();
        let per_user = (round_rows / reading.max(1)).max(16);
        for cursor in cursors.iter_mut().filter(|c| c.rows.is_empty()) {
            let Some(from) = cursor.next else { continue };
            let key = (cursor.user.clone(), from);
            let rows = store.range_in_prefix::<LegacyNotificationsTable, _>(
                &(cursor.user.as_str(),),
                Some(&key),
                false,
                per_user,
            )?;
            cursor.next = match rows.last() {
                Some(((_, last), _)) if rows.len() == per_user => last.checked_add(1),
                _ => None,
            };
            cursor
                .rows
                .extend(rows.into_iter().map(|((_, sid), n)| (sid, n)));
        }
        // Every user's rows up to `bound` have been read (a user with rows left to read has
        // some buffered: a read that found none ended their reading).
        let bound = cursors
            .iter()
            .filter(|c| c.next.is_some())
            .filter_map(|c| c.rows.back().map(|(sid, _)| *sid))
            .min()
            .unwrap_or(u64::MAX);
        let mut batch = Batch::new();
        let mut events: BTreeMap<(String, u64), NotifiedEvent> = BTreeMap::new();
        for cursor in &mut cursors {
            while cursor.rows.front().is_some_and(|(sid, _)| *sid <= bound) {
                let Some((sid, n)) = cursor.rows.pop_front() else {
                    break;
                };
                let user = &cursor.user;
                batch.delete::<LegacyNotificationsTable>(&(user.clone(), sid));
                let event = match events.entry((n.room_id.clone(), sid)) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let stored = store.get::<NotifiedTable>(e.key())?;
                        e.insert(stored.unwrap_or_else(|| NotifiedEvent {
                            event_id: n.event_id.clone(),
                            thread: n.thread.clone(),
                            ts: n.ts,
                            ..NotifiedEvent::default()
                        }))
                    }
                };
                if event.of(user).is_none() {
                    event.add(user, n.highlight, n.actions);
                }
            }
        }
        converted += events.len() as u64;
        for (key, event) in &events {
            batch.put::<NotifiedTable>(key, event);
        }
        if !batch.is_empty() {
            store.commit_blocking(batch)?;
        }
    }
}

/// The users with a version-8 notification row, one seek each.
fn legacy_users(store: &Store) -> Result<Vec<String>> {
    let mut users: Vec<String> = Vec::new();
    loop {
        // Past every position of the last user found: the next row is the next user's.
        let from = users.last().map(|u| (u.clone(), u64::MAX));
        let next = store.range::<LegacyNotificationsTable>(from.as_ref(), false, 2)?;
        let next = next
            .into_iter()
            .map(|((user, _), _)| user)
            .find(|user| users.last() != Some(user));
        match next {
            Some(user) => users.push(user),
            None => return Ok(users),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::push::notifications::{is_read, Counts};
    use crate::store::EngineKind;

    fn notification(room: &str, thread: &str, highlight: bool) -> Notification {
        Notification {
            room_id: room.into(),
            event_id: "$e".into(),
            thread: thread.into(),
            highlight,
            actions: "[]".into(),
            ts: 0,
        }
    }

    fn unread(thread: &str, highlight: bool) -> Unread {
        Unread {
            thread: thread.into(),
            highlight,
            call: false,
        }
    }

    /// Version-7 rows become marks that read exactly what the unread rows said was read.
    #[test]
    fn unread_rows_convert_to_marks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), EngineKind::Redb, 1 << 20).unwrap();
        let (u, r, other) = ("@u:x".to_owned(), "!r:x".to_owned(), "!o:x".to_owned());
        let mut b = Batch::new();
        // In !r: 9 read, 10 unread (highlight), 11 read by a receipt in thread $t, 12 unread,
        // 13 in !o unread, 14 read by a receipt in thread $u.
        for (sid, room, thread, hl) in [
            (9, &r, "main", false),
            (10, &r, "main", true),
            (11, &r, "$t", false),
            (12, &r, "main", false),
            (13, &other, "main", false),
            (14, &r, "$u", false),
        ] {
            b.put::<LegacyNotificationsTable>(&(u.clone(), sid), &notification(room, thread, hl));
        }
        b.put::<LegacyUnreadTable>(&(u.clone(), r.clone(), 10), &unread("main", true));
        b.put::<LegacyUnreadTable>(&(u.clone(), r.clone(), 12), &unread("main", false));
        b.put::<LegacyUnreadTable>(&(u.clone(), other.clone(), 13), &unread("main", false));
        // Another user in !r: 15 unread, 16 read in thread $t.
        let v = "@v:x".to_owned();
        b.put::<LegacyNotificationsTable>(&(v.clone(), 15), &notification(&r, "main", false));
        b.put::<LegacyNotificationsTable>(&(v.clone(), 16), &notification(&r, "$t", false));
        b.put::<LegacyUnreadTable>(&(v.clone(), r.clone(), 15), &unread("main", false));
        store.commit_blocking(b).unwrap();

        assert_eq!(convert_unread_rows(&store).unwrap(), 3);
        let theirs = store
            .get::<CountsTable>(&(v.clone(), r.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(theirs.total().notifications, 1);
        assert!(is_read(Some(&theirs), 16, "$t") && !is_read(Some(&theirs), 15, "main"));
        let counts = store
            .get::<CountsTable>(&(u.clone(), r.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(
            counts.main,
            Counts {
                notifications: 2,
                highlights: 1
            }
        );
        for (sid, thread, read) in [
            (9, "main", true),
            (10, "main", false),
            (11, "$t", true),
            (12, "main", false),
            // Read by a read of its thread, past the newest unread notification.
            (14, "$u", true),
        ] {
            assert_eq!(is_read(Some(&counts), sid, thread), read, "{sid}");
        }
        let counts = store
            .get::<CountsTable>(&(u.clone(), other))
            .unwrap()
            .unwrap();
        assert_eq!(counts.total().notifications, 1);
        assert!(store
            .range::<LegacyUnreadTable>(None, false, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            convert_unread_rows(&store).unwrap(),
            0,
            "nothing left to do"
        );
    }

    /// Version-8 rows become one row per event listing the same users, and the listing
    /// finds them as before.
    #[test]
    fn notification_rows_convert_to_one_row_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), EngineKind::Redb, 1 << 20).unwrap();
        let (r, o) = ("!r:x", "!o:x");
        let mut b = Batch::new();
        // Three users with 40, 20 and 13 rows; rounds of 16 rows per user, so a round ends
        // at the newest position every user was read to.
        let users = ["@u:x", "@v:x", "@w:x"];
        for sid in 1..=40_u64 {
            let room = if sid % 2 == 0 { r } else { o };
            for (i, user) in users.iter().enumerate() {
                if sid % (i as u64 + 1) == 0 {
                    let mut n = notification(room, "main", sid % 5 == 0);
                    n.actions = format!("[\"notify\",{i}]");
                    b.put::<LegacyNotificationsTable>(&(user.to_string(), sid), &n);
                }
            }
        }
        store.commit_blocking(b).unwrap();
        // Events notifying at least one user: all 40 (@u is notified by every one).
        assert_eq!(convert_in_rounds(&store, 48).unwrap(), 40);
        assert!(store
            .range::<LegacyNotificationsTable>(None, false, 1)
            .unwrap()
            .is_empty());
        for sid in 1..=40_u64 {
            let room = if sid % 2 == 0 { r } else { o };
            let row = store
                .get::<NotifiedTable>(&(room.to_owned(), sid))
                .unwrap()
                .unwrap_or_else(|| panic!("event {sid}"));
            let listed: Vec<&str> = row.users.iter().map(|u| u.user_id.as_str()).collect();
            let expected: Vec<&str> = users
                .iter()
                .enumerate()
                .filter(|(i, _)| sid % (*i as u64 + 1) == 0)
                .map(|(_, u)| *u)
                .collect();
            assert_eq!(listed, expected, "event {sid}");
            for (i, user) in users.iter().enumerate() {
                if let Some(u) = row.of(user) {
                    assert_eq!(u.highlight, sid % 5 == 0);
                    assert_eq!(row.actions[u.actions as usize], format!("[\"notify\",{i}]"));
                }
            }
        }
        assert_eq!(
            convert_notification_rows(&store).unwrap(),
            0,
            "nothing left to do"
        );
    }
}
