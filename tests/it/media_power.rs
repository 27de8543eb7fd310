//! Media durability at a power cut. SIGKILL (tests/it/crash.rs) cannot show a missing fsync:
//! the kernel's page cache survives the process. Here the media service's filesystem changes
//! are recorded (through the hook in `service::media::files`), and a simulated power cut
//! rebuilds the media directory from only what completed fsyncs covered: file contents synced,
//! directory entries synced in their directory, new directories synced into their parents.
//! Every acknowledged upload must survive that; and with any one of the service's fsyncs
//! suppressed, some upload must be lost, which shows that the test can fail.
//!
//! Not covered here: the store's own durability (redb's is tested at a power cut in
//! `store::power`; sled's only under SIGKILL), and the filesystem's own guarantees (ordering,
//! rename atomicity).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use hearth::service::media::files::{set_recorder, Recorder, SyncPoint};
use reqwest::StatusCode;

use crate::common::TestServer;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Node {
    Dir,
    /// A file, by inode: renames move the inode to a new name.
    File(u64),
}

#[derive(Default)]
struct State {
    /// The namespace as it is now (what the service created, renamed, removed).
    live: HashMap<PathBuf, Node>,
    /// The namespace as the disk has it: entries whose directory was synced since they changed.
    durable: HashMap<PathBuf, Node>,
    /// Each inode's bytes as of its last fsync (empty if never synced).
    data: HashMap<u64, Vec<u8>>,
    next_inode: u64,
    skip: Option<SyncPoint>,
}

/// Records the media service's changes; [`PowerCut::cut`] applies what a power loss keeps.
#[derive(Default)]
struct PowerCut(Mutex<State>);

impl PowerCut {
    fn skipping(point: Option<SyncPoint>) -> Arc<Self> {
        let me = Arc::new(PowerCut::default());
        me.0.lock().unwrap().skip = point;
        me
    }

    /// Replaces `data_dir/media` with what survives a power cut now.
    fn cut(&self, data_dir: &Path) {
        let state = self.0.lock().unwrap();
        let base = data_dir.to_owned();
        let alive = |path: &Path| {
            path.ancestors()
                .skip(1)
                .take_while(|a| *a != base)
                .all(|a| state.durable.get(a) == Some(&Node::Dir))
        };
        let mut keep: Vec<(&PathBuf, &Node)> = state
            .durable
            .iter()
            .filter(|(p, _)| p.starts_with(data_dir.join("media")) && alive(p))
            .collect();
        keep.sort_by_key(|(p, _)| p.components().count());
        std::fs::remove_dir_all(data_dir.join("media")).unwrap();
        for (path, node) in keep {
            match node {
                Node::Dir => std::fs::create_dir(path).unwrap(),
                Node::File(inode) => {
                    let bytes = state.data.get(inode).cloned().unwrap_or_default();
                    std::fs::write(path, bytes).unwrap();
                }
            }
        }
    }
}

impl Recorder for PowerCut {
    fn created_file(&self, path: &Path) {
        let mut s = self.0.lock().unwrap();
        s.next_inode += 1;
        let inode = s.next_inode;
        s.live.insert(path.to_owned(), Node::File(inode));
    }
    fn created_dir(&self, path: &Path) {
        self.0
            .lock()
            .unwrap()
            .live
            .insert(path.to_owned(), Node::Dir);
    }
    fn renamed(&self, from: &Path, to: &Path) {
        let mut s = self.0.lock().unwrap();
        if let Some(node) = s.live.remove(from) {
            s.live.insert(to.to_owned(), node);
        }
    }
    fn removed(&self, path: &Path) {
        self.0
            .lock()
            .unwrap()
            .live
            .retain(|p, _| !p.starts_with(path));
    }
    fn synced_file(&self, path: &Path) {
        let mut s = self.0.lock().unwrap();
        if let Some(Node::File(inode)) = s.live.get(path).copied() {
            s.data.insert(inode, std::fs::read(path).unwrap());
        }
    }
    fn synced_dir(&self, dir: &Path) {
        let mut s = self.0.lock().unwrap();
        let children: Vec<PathBuf> = s
            .live
            .keys()
            .chain(s.durable.keys())
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        for child in children {
            match s.live.get(&child).copied() {
                Some(node) => s.durable.insert(child, node),
                None => s.durable.remove(&child),
            };
        }
    }
    fn skip(&self, point: SyncPoint) -> bool {
        self.0.lock().unwrap().skip == Some(point)
    }
}

/// Uploads a few files, cuts the power, starts again: which uploads are intact?
async fn survivors(skip: Option<SyncPoint>) -> Vec<bool> {
    let recorder = PowerCut::skipping(skip);
    let installed = recorder.clone();
    let mut srv = TestServer::start_with(move |c| {
        c.media.legacy_download_freeze = None;
        set_recorder(&c.data_dir, Some(installed));
    })
    .await;
    let (_, token, _) = srv.register("alice", "pw").await;
    let mut uploads = Vec::new();
    for i in 0..4u8 {
        let data: Vec<u8> = (0..20_000u32)
            .map(|n| (n as u8) ^ i.wrapping_mul(37))
            .collect();
        let response = srv
            .http
            .post(format!("{}/_matrix/media/v3/upload", srv.base))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "upload acknowledged");
        let body: serde_json::Value = response.json().await.unwrap();
        let mxc = body["content_uri"].as_str().unwrap().to_owned();
        uploads.push((mxc.strip_prefix("mxc://").unwrap().to_owned(), data));
    }

    // The process ends, then the power: only what an fsync covered is on the disk.
    srv.server.take().unwrap().stop().await;
    set_recorder(&srv.config.data_dir, None);
    recorder.cut(&srv.config.data_dir);
    let server = hearth::server::start(srv.config.clone()).await.unwrap();
    srv.base = server.base_url();
    srv.server = Some(server);

    let mut intact = Vec::new();
    for (server_and_id, data) in uploads {
        let response = srv
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{server_and_id}",
                srv.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let ok = response.status() == StatusCode::OK;
        intact.push(ok && response.bytes().await.is_ok_and(|b| b[..] == data[..]));
    }
    intact
}

#[tokio::test]
async fn acknowledged_uploads_survive_a_power_cut() {
    assert_eq!(survivors(None).await, vec![true; 4]);
}

/// The test above fails if any one of the media service's fsyncs is missing: each is
/// suppressed in turn, and some acknowledged upload is then lost at the power cut.
#[tokio::test]
async fn a_missing_media_fsync_loses_an_acknowledged_upload() {
    for point in [SyncPoint::FileData, SyncPoint::NewDir, SyncPoint::Rename] {
        let intact = survivors(Some(point)).await;
        assert!(
            intact.contains(&false),
            "without the {point:?} fsync every upload survived: the test cannot see it ({intact:?})"
        );
    }
}
