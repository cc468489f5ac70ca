//! [`SimFs`]: a file system in memory that can lose power.
//!
//! It keeps two views of everything. The *current* view is what the OS
//! shows a running process: every write, create, rename and remove as soon
//! as it is made (a `write` or a buffer flush lands here, as in the page
//! cache). The *durable* view is what a disk holds after a power cut:
//!
//! - a file's bytes as of its last `sync_data`/`sync_all`; bytes appended
//!   since survive only as a prefix of random length, cut at any byte,
//!   sometimes as zeros (the new size reached the disk, the data did not);
//!   a file rewritten or shortened since its last sync comes back as it was
//!   then;
//! - a directory's entries as of its last `sync_dir`; the changes made
//!   since (creates, removes, renames, each one atomic) survive only as a
//!   prefix of random length, in the order they were made, as a journaling
//!   file system commits them;
//! - a file or directory whose own entry did not survive is gone, whatever
//!   was synced inside it.
//!
//! [`SimFs::arm_cut`] makes the power go off at a chosen operation (that
//! operation and every later one fail, as on a dead machine); then
//! [`SimFs::restart`] brings up a new machine on what survived. A process
//! crash (`kill -9`, no power loss) keeps the current view instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{DirEntry, FileSystem, LockGuard, ReadFile, WriteFile};

/// The kinds of operation, for choosing where the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    CreateDir,
    ReadDir,
    Open,
    Create,
    Write,
    Read,
    SyncData,
    SyncAll,
    SetLen,
    Remove,
    Rename,
    SyncDir,
    Lock,
}

/// Where the power goes off.
#[derive(Clone, Debug)]
pub enum CutAt {
    /// At the n-th operation (1-based) since this machine came up.
    Op(u64),
    /// At the n-th operation (1-based) of `kind` on a path that contains
    /// `path_contains`.
    Nth {
        kind: OpKind,
        path_contains: String,
        n: u32,
    },
}

/// The operation the power went off at (it did not happen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Its number since the machine came up (1-based).
    pub op: u64,
    pub kind: OpKind,
    pub path: PathBuf,
}

/// What a restart keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survival {
    /// The power was lost: only what was synced, plus random prefixes of
    /// what was not (see the module docs).
    PowerLoss,
    /// Only the process died: everything the OS was shown is kept, and what
    /// was not synced is still not synced.
    ProcessCrash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// A change to a directory's entries, kept until the directory is synced.
#[derive(Clone, Debug)]
enum DirOp {
    Insert(String, Entry),
    Remove(String),
    /// Atomic: the old name or the new one, never neither or both.
    Rename {
        from: String,
        to: String,
    },
}

fn apply(entries: &mut BTreeMap<String, Entry>, op: &DirOp) {
    match op {
        DirOp::Insert(name, e) => {
            entries.insert(name.clone(), *e);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename { from, to } => {
            if let Some(e) = entries.remove(from) {
                entries.insert(to.clone(), e);
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Dir {
    entries: BTreeMap<String, Entry>,
    synced: BTreeMap<String, Entry>,
    log: Vec<DirOp>,
}

impl Dir {
    fn change(&mut self, op: DirOp) {
        apply(&mut self.entries, &op);
        self.log.push(op);
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..synced_len]` is durable, unless `synced_copy` holds the
    /// durable bytes because a write or truncation changed them since.
    synced_len: usize,
    synced_copy: Option<Vec<u8>>,
}

impl Inode {
    fn durable(&self) -> &[u8] {
        match &self.synced_copy {
            Some(copy) => copy,
            None => &self.data[..self.synced_len],
        }
    }

    /// Keeps the durable bytes aside before `data` changes at `offset`.
    fn before_change_at(&mut self, offset: usize) {
        if offset < self.synced_len && self.synced_copy.is_none() {
            self.synced_copy = Some(self.data[..self.synced_len].to_vec());
        }
    }

    fn write_at(&mut self, pos: usize, buf: &[u8]) {
        self.before_change_at(pos);
        if self.data.len() < pos + buf.len() {
            self.data.resize(pos + buf.len(), 0);
        }
        self.data[pos..pos + buf.len()].copy_from_slice(buf);
    }

    fn set_len(&mut self, len: usize) {
        self.before_change_at(len);
        self.data.resize(len, 0);
    }

    fn sync(&mut self) {
        self.synced_len = self.data.len();
        self.synced_copy = None;
    }

    /// What a power cut leaves of this file.
    fn survive(&self, rng: &mut StdRng) -> Inode {
        let durable = self.durable();
        let mut data = durable.to_vec();
        if self.synced_copy.is_none() && self.data.len() > durable.len() {
            let tail = &self.data[durable.len()..];
            let keep = match rng.gen_range(0..3) {
                0 => 0,
                1 => tail.len(),
                _ => rng.gen_range(0..=tail.len()),
            };
            if rng.gen_ratio(1, 4) {
                data.resize(data.len() + keep, 0);
            } else {
                data.extend_from_slice(&tail[..keep]);
            }
        }
        Inode {
            synced_len: data.len(),
            data,
            synced_copy: None,
        }
    }
}

#[derive(Debug)]
struct State {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    ops: u64,
    armed: Option<CutAt>,
    matched: u32,
    off: Option<Cut>,
    locks: HashSet<PathBuf>,
}

fn root() -> PathBuf {
    PathBuf::from("/")
}

impl State {
    fn new() -> State {
        State {
            dirs: BTreeMap::from([(root(), Dir::default())]),
            inodes: HashMap::new(),
            next_ino: 1,
            ops: 0,
            armed: None,
            matched: 0,
            off: None,
            locks: HashSet::new(),
        }
    }

    /// Counts an operation, and turns the power off when it is the armed
    /// one (the operation then fails, as every later one does).
    fn gate(&mut self, kind: OpKind, path: &Path) -> io::Result<()> {
        if self.off.is_some() {
            return Err(power_off());
        }
        self.ops += 1;
        let hit = match &self.armed {
            None => false,
            Some(CutAt::Op(n)) => self.ops >= *n,
            Some(CutAt::Nth {
                kind: k,
                path_contains,
                n,
            }) if *k == kind && path.to_string_lossy().contains(path_contains.as_str()) => {
                self.matched += 1;
                self.matched >= *n
            }
            Some(CutAt::Nth { .. }) => false,
        };
        if hit {
            self.armed = None;
            self.off = Some(Cut {
                op: self.ops,
                kind,
                path: path.to_path_buf(),
            });
            return Err(power_off());
        }
        Ok(())
    }

    fn dir(&self, path: &Path) -> io::Result<&Dir> {
        self.dirs.get(path).ok_or_else(|| not_found(path))
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(path).ok_or_else(|| not_found(path))
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        let (parent, name) = split(path)?;
        match self.dir(&parent)?.entries.get(&name) {
            Some(Entry::File(ino)) => Ok(*ino),
            Some(Entry::Dir) => Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            ))),
            None => Err(not_found(path)),
        }
    }

    fn new_file(&mut self, path: &Path) -> io::Result<u64> {
        let (parent, name) = split(path)?;
        let ino = self.next_ino;
        self.dir_mut(&parent)?
            .change(DirOp::Insert(name, Entry::File(ino)));
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        Ok(ino)
    }

    /// The machine that comes up after a power cut.
    fn survive(&self, rng: &mut StdRng) -> State {
        let mut out = State::new();
        out.next_ino = self.next_ino;
        self.survive_dir(&root(), rng, &mut out);
        out
    }

    fn survive_dir(&self, path: &Path, rng: &mut StdRng, out: &mut State) {
        let Some(dir) = self.dirs.get(path) else {
            return;
        };
        let committed = match rng.gen_range(0..3) {
            0 => 0,
            1 => dir.log.len(),
            _ => rng.gen_range(0..=dir.log.len()),
        };
        let mut entries = dir.synced.clone();
        for op in &dir.log[..committed] {
            apply(&mut entries, op);
        }
        for (name, entry) in &entries {
            match entry {
                Entry::File(ino) => {
                    if let (false, Some(inode)) =
                        (out.inodes.contains_key(ino), self.inodes.get(ino))
                    {
                        out.inodes.insert(*ino, inode.survive(rng));
                    }
                }
                Entry::Dir => self.survive_dir(&path.join(name), rng, out),
            }
        }
        out.dirs.insert(
            path.to_path_buf(),
            Dir {
                synced: entries.clone(),
                entries,
                log: Vec::new(),
            },
        );
    }

    /// The machine that comes up after only the process died.
    fn keep_all(&self) -> State {
        State {
            dirs: self.dirs.clone(),
            inodes: self.inodes.clone(),
            next_ino: self.next_ino,
            ..State::new()
        }
    }
}

fn power_off() -> io::Error {
    io::Error::other("simulated power loss: the machine is off")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

/// `path` made absolute-normal (no `.`/`..`), or an error.
fn normal(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("SimFs takes plain absolute paths, not {}", path.display()),
                ))
            }
        }
    }
    if !out.has_root() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("SimFs takes absolute paths, not {}", path.display()),
        ));
    }
    Ok(out)
}

/// The directory and the name of `path`.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = normal(path)?;
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_owned())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )),
    }
}

/// A file system in memory that models what a power cut keeps; see the
/// module docs. Cheap to clone: clones share the machine.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("SimFs")
            .field("ops", &st.ops)
            .field("off", &st.off)
            .finish_non_exhaustive()
    }
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs::new()
    }
}

impl SimFs {
    /// An empty machine with the root directory `/`.
    pub fn new() -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    /// Makes the power go off at `at` (replacing an earlier choice).
    pub fn arm_cut(&self, at: CutAt) {
        let mut st = self.state.lock();
        st.armed = Some(at);
        st.matched = 0;
    }

    /// Turns the power off now, if it is not off already.
    pub fn cut_now(&self) {
        let mut st = self.state.lock();
        if st.off.is_none() {
            st.off = Some(Cut {
                op: st.ops + 1,
                kind: OpKind::Lock,
                path: PathBuf::from("(cut between operations)"),
            });
        }
    }

    /// Where the power went off, once it has.
    pub fn cut(&self) -> Option<Cut> {
        self.state.lock().off.clone()
    }

    /// Whether the power is off.
    pub fn is_off(&self) -> bool {
        self.state.lock().off.is_some()
    }

    /// Operations since this machine came up.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// A new machine on what survives (chosen with `seed`) of this one as
    /// it is now: see [`Survival`]. This machine is left as it is; cut its
    /// power first ([`SimFs::arm_cut`], [`SimFs::cut_now`]) so that
    /// nothing still running on it believes it is writing.
    pub fn restart(&self, survival: Survival, seed: u64) -> SimFs {
        let st = self.state.lock();
        let next = match survival {
            Survival::PowerLoss => st.survive(&mut StdRng::seed_from_u64(seed)),
            Survival::ProcessCrash => st.keep_all(),
        };
        SimFs {
            state: Arc::new(Mutex::new(next)),
        }
    }

    /// A file's current bytes (what a running process would read).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let ino = st.file(path)?;
        Ok(st.inodes[&ino].data.clone())
    }

    /// Every file with its current length, for failure messages.
    pub fn listing(&self) -> Vec<(PathBuf, u64)> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for (path, dir) in &st.dirs {
            for (name, e) in &dir.entries {
                if let Entry::File(ino) = e {
                    out.push((path.join(name), st.inodes[ino].data.len() as u64));
                }
            }
        }
        out
    }

    fn handle(&self, ino: u64, path: &Path, kind: OpKind) -> SimFile {
        SimFile {
            state: self.state.clone(),
            ino,
            path: path.to_path_buf(),
            pos: 0,
            kind,
        }
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normal(path)?;
        let mut st = self.state.lock();
        st.gate(OpKind::CreateDir, &path)?;
        let mut at = root();
        for c in path.components().skip(1) {
            let Component::Normal(name) = c else { continue };
            let name = name.to_string_lossy().into_owned();
            let next = at.join(&name);
            match st.dir(&at)?.entries.get(&name) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file", next.display()),
                    ))
                }
                None => {
                    st.dir_mut(&at)?.change(DirOp::Insert(name, Entry::Dir));
                    st.dirs.insert(next.clone(), Dir::default());
                }
            }
            at = next;
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        let st = self.state.lock();
        st.off.is_none() && normal(path).is_ok_and(|p| st.dirs.contains_key(&p))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let path = normal(path)?;
        let mut st = self.state.lock();
        st.gate(OpKind::ReadDir, &path)?;
        Ok(st
            .dir(&path)?
            .entries
            .iter()
            .map(|(name, e)| DirEntry {
                name: name.clone(),
                is_file: matches!(e, Entry::File(_)),
            })
            .collect())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let ino = {
            let mut st = self.state.lock();
            st.gate(OpKind::Open, path)?;
            st.file(path)?
        };
        Ok(Box::new(self.handle(ino, path, OpKind::Read)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let ino = {
            let mut st = self.state.lock();
            st.gate(OpKind::Open, path)?;
            st.file(path)?
        };
        Ok(Box::new(self.handle(ino, path, OpKind::Write)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let ino = {
            let mut st = self.state.lock();
            st.gate(OpKind::Create, path)?;
            match st.file(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists", path.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => st.new_file(path)?,
                Err(e) => return Err(e),
            }
        };
        Ok(Box::new(self.handle(ino, path, OpKind::Write)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let ino = {
            let mut st = self.state.lock();
            st.gate(OpKind::Create, path)?;
            match st.file(path) {
                Ok(ino) => {
                    st.inodes.get_mut(&ino).expect("entry has inode").set_len(0);
                    ino
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => st.new_file(path)?,
                Err(e) => return Err(e),
            }
        };
        Ok(Box::new(self.handle(ino, path, OpKind::Write)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.gate(OpKind::Remove, path)?;
        st.file(path)?;
        let (parent, name) = split(path)?;
        st.dir_mut(&parent)?.change(DirOp::Remove(name));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.gate(OpKind::Rename, from)?;
        st.file(from)?;
        let (dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "SimFs renames only within a directory",
            ));
        }
        if from_name != to_name {
            st.dir_mut(&dir)?.change(DirOp::Rename {
                from: from_name,
                to: to_name,
            });
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = normal(dir)?;
        let mut st = self.state.lock();
        st.gate(OpKind::SyncDir, &dir)?;
        let d = st.dir_mut(&dir)?;
        d.synced = d.entries.clone();
        d.log.clear();
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let path = normal(path)?;
        let mut st = self.state.lock();
        st.gate(OpKind::Lock, &path)?;
        if !st.locks.insert(path.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "held by another process",
            ));
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            path,
        }))
    }
}

struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

/// An open file of a [`SimFs`].
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    path: PathBuf,
    pos: u64,
    /// `Read` or `Write`: what it was opened for.
    kind: OpKind,
}

impl SimFile {
    fn with<T>(&self, kind: OpKind, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut st = self.state.lock();
        st.gate(kind, &self.path)?;
        let inode = st
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| not_found(&self.path))?;
        Ok(f(inode))
    }

    fn writable(&self) -> io::Result<()> {
        if self.kind == OpKind::Write {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file not open for writing",
            ))
        }
    }
}

impl Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writable()?;
        let pos = self.pos as usize;
        self.with(OpKind::Write, |inode| inode.write_at(pos, buf))?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    /// Nothing is buffered here: a write is in the OS's view at once.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for SimFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.pos as usize;
        let n = self.with(OpKind::Read, |inode| {
            let avail = inode.data.len().saturating_sub(pos);
            let n = avail.min(buf.len());
            buf[..n].copy_from_slice(&inode.data[pos..pos + n]);
            n
        })?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SimFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = {
            let st = self.state.lock();
            if st.off.is_some() {
                return Err(power_off());
            }
            st.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64)
        };
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl WriteFile for SimFile {
    fn sync_data(&self) -> io::Result<()> {
        self.with(OpKind::SyncData, Inode::sync)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.with(OpKind::SyncAll, Inode::sync)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.with(OpKind::SetLen, |inode| inode.set_len(len as usize))
    }
}

impl ReadFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        let st = self.state.lock();
        if st.off.is_some() {
            return Err(power_off());
        }
        Ok(st.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, bytes: &[u8]) -> Box<dyn WriteFile> {
        let mut f = fs.create(Path::new(path)).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// Every seed's outcome of a power cut.
    fn outcomes(fs: &SimFs, path: &str) -> HashSet<Option<Vec<u8>>> {
        (0..200)
            .map(|seed| {
                fs.restart(Survival::PowerLoss, seed)
                    .read(Path::new(path))
                    .ok()
            })
            .collect()
    }

    #[test]
    fn a_flush_is_not_an_fsync() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let f = write(&fs, "/d/f", b"synced");
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        let mut f = f;
        f.write_all(b" flushed").unwrap();
        f.flush().unwrap();
        assert_eq!(fs.read(Path::new("/d/f")).unwrap(), b"synced flushed");
        let seen = outcomes(&fs, "/d/f");
        for got in &seen {
            let got = got
                .as_ref()
                .expect("a synced file in a synced directory survives");
            assert!(got.starts_with(b"synced"), "{got:?}");
            assert!(got.len() <= b"synced flushed".len());
        }
        assert!(
            seen.contains(&Some(b"synced".to_vec())),
            "unsynced bytes can be lost"
        );
        assert!(seen.contains(&Some(b"synced flushed".to_vec())));
        assert!(
            seen.iter().flatten().any(|b| b.len() > 6 && b.len() < 14),
            "a torn append keeps a prefix"
        );
        f.sync_data().unwrap();
        assert_eq!(
            outcomes(&fs, "/d/f"),
            HashSet::from([Some(b"synced flushed".to_vec())])
        );
    }

    #[test]
    fn an_entry_needs_its_directory_synced() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = write(&fs, "/d/f", b"data");
        f.sync_all().unwrap();
        // Neither /d (in /) nor f (in /d) was synced.
        assert!(outcomes(&fs, "/d/f").contains(&None));
        fs.sync_dir(Path::new("/")).unwrap();
        assert!(outcomes(&fs, "/d/f").contains(&None));
        fs.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(
            outcomes(&fs, "/d/f"),
            HashSet::from([Some(b"data".to_vec())])
        );
    }

    #[test]
    fn a_rename_is_atomic_and_durable_after_a_directory_sync() {
        let fs = SimFs::new();
        let old = write(&fs, "/old", b"old");
        old.sync_all().unwrap();
        let tmp = write(&fs, "/tmp", b"new");
        tmp.sync_all().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.rename(Path::new("/tmp"), Path::new("/old")).unwrap();
        let mut seen = HashSet::new();
        for seed in 0..200 {
            let after = fs.restart(Survival::PowerLoss, seed);
            let a = after.read(Path::new("/old")).unwrap();
            let t = after.read(Path::new("/tmp")).ok();
            match (a.as_slice(), t) {
                (b"old", Some(t)) => assert_eq!(t, b"new"),
                (b"new", None) => {}
                other => panic!("not atomic: {other:?}"),
            }
            seen.insert(a);
        }
        assert_eq!(seen.len(), 2, "either outcome happens");
        fs.sync_dir(Path::new("/")).unwrap();
        assert_eq!(
            outcomes(&fs, "/old"),
            HashSet::from([Some(b"new".to_vec())])
        );
    }

    #[test]
    fn a_rewrite_or_truncation_since_the_sync_comes_back_as_synced() {
        let fs = SimFs::new();
        let mut f = write(&fs, "/f", b"0123456789");
        f.sync_all().unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        f.set_len(4).unwrap();
        f.seek(SeekFrom::Start(2)).unwrap();
        f.write_all(b"xy").unwrap();
        assert_eq!(fs.read(Path::new("/f")).unwrap(), b"01xy");
        assert_eq!(
            outcomes(&fs, "/f"),
            HashSet::from([Some(b"0123456789".to_vec())])
        );
        f.sync_data().unwrap();
        assert_eq!(outcomes(&fs, "/f"), HashSet::from([Some(b"01xy".to_vec())]));
    }

    #[test]
    fn the_power_goes_at_the_armed_operation_and_stays_off() {
        let fs = SimFs::new();
        fs.arm_cut(CutAt::Nth {
            kind: OpKind::SyncData,
            path_contains: "wal".into(),
            n: 2,
        });
        let f = write(&fs, "/wal", b"a");
        f.sync_data().unwrap();
        let err = f.sync_data().unwrap_err();
        assert!(err.to_string().contains("power"), "{err}");
        let cut = fs.cut().unwrap();
        assert_eq!(
            (cut.kind, cut.path),
            (OpKind::SyncData, PathBuf::from("/wal"))
        );
        assert!(fs.create(Path::new("/other")).is_err());
        assert!(fs.read_dir(Path::new("/")).is_err());

        let fs = SimFs::new();
        fs.arm_cut(CutAt::Op(3));
        fs.create_dir_all(Path::new("/a")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        assert!(fs.create_dir_all(Path::new("/b")).is_err());
        assert_eq!(fs.cut().unwrap().op, 3);
    }

    #[test]
    fn a_process_crash_keeps_everything_but_syncs_nothing() {
        let fs = SimFs::new();
        let f = write(&fs, "/f", b"unsynced");
        drop(f);
        let crashed = fs.restart(Survival::ProcessCrash, 0);
        assert_eq!(crashed.read(Path::new("/f")).unwrap(), b"unsynced");
        assert!(outcomes(&crashed, "/f").contains(&None));
    }

    #[test]
    fn locks_exclude_until_dropped() {
        let fs = SimFs::new();
        let g = fs.lock(Path::new("/LOCK")).unwrap();
        let err = fs.lock(Path::new("/LOCK")).map(|_| ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(g);
        fs.lock(Path::new("/LOCK")).unwrap();
    }
}
