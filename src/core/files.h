// files.h — durable file writes and run-folder ownership.
//
// - AtomicFile / write_file_atomic: a temporary file beside the target ("<path>.tmp.<pid>"), fsync,
//   rename, then fsync of the folder, so that after a crash the target is either the old file or the
//   whole new one, and the rename itself survives a power cut.
// - FolderLock: an exclusive flock on "<dir>/.lock" holding the owner's PID; a second holder is told
//   who has it. The kernel drops the lock when its process dies, even by kill -9.
// - remove_temp_files: removes what killed writers left behind ("*.tmp.<pid>" files and folders).
// - Fault injection for tests (environment MOE_FAULT, read once):
//     MOE_FAULT=kill-after:NAME   the process kills itself (SIGKILL) right after committing a file
//                                 whose name (last path component) is NAME;
//     MOE_FAULT=enospc:NAME       writing a file named NAME fails as on a full disk (ENOSPC).
#pragma once
#include <functional>
#include <string>

namespace moe {

// A file written atomically in pieces: write() appends to a temporary file beside `path`; commit()
// fsyncs it, renames it onto path and fsyncs the folder. Destroyed without commit(), it removes the
// temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool enospc_ = false;  // fault injection
};

// Write `bytes` to `path` atomically (see AtomicFile).
void write_file_atomic(const std::string& path, const std::string& bytes);

// The whole file; throws moe::Error "cannot read PATH: REASON; HINT" when it cannot.
std::string read_file(const std::string& path, const std::string& hint);

// fsync a folder, so that the renames and creations inside it are durable.
void fsync_dir(const std::string& dir);

// The temporary name AtomicFile and checkpoint folders use for `path` in this process.
std::string temp_name(const std::string& path);

// A folder written whole or not at all: write(tmp) fills a fresh folder beside `out` (temp_name), which
// then replaces `out` (removed first: the caller has checked it holds nothing to keep) by a rename, and
// the parent folder is fsynced. When write throws, the temporary folder is removed and `out` is left as
// it was. `who` names the command in the rename's error.
void write_folder_atomic(const std::string& out, const std::string& who, const std::function<void(const std::string&)>& write);
// Removes every "*.tmp.<pid>" entry of `dir` (not recursive) whose process is not this one; returns
// how many. Call it only while holding the folder's FolderLock.
int remove_temp_files(const std::string& dir);

// Exclusive ownership of a folder for as long as the object lives. Throws moe::Error naming the
// holder's PID when another process has it.
class FolderLock {
 public:
  FolderLock(const std::string& dir, const std::string& what);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace moe
