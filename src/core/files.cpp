#include "core/files.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

// MOE_FAULT=<kind>:<file name>, read once.
struct Fault {
  std::string kind, name;
};

const Fault& fault() {
  static const Fault f = [] {
    Fault r;
    const char* s = std::getenv("MOE_FAULT");
    if (!s) return r;
    const std::string v = s;
    const size_t colon = v.find(':');
    if (colon == std::string::npos) return r;
    r.kind = v.substr(0, colon);
    r.name = v.substr(colon + 1);
    return r;
  }();
  return f;
}

bool fault_is(const char* kind, const std::string& path) {
  const Fault& f = fault();
  return !f.kind.empty() && f.kind == kind && fs::path(path).filename() == f.name;
}

std::string parent_of(const std::string& path) {
  const std::string p = fs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

// Test hook: kills this process if MOE_FAULT asks for it after the file named like `path`.
void fault_point_after(const std::string& path) {
  if (fault_is("kill-after", path)) ::kill(::getpid(), SIGKILL);
}

}  // namespace

std::string temp_name(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void write_folder_atomic(const std::string& out, const std::string& who, const std::function<void(const std::string&)>& write) {
  namespace fs = std::filesystem;
  const std::string tmp = temp_name(out);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    write(tmp);
    if (fs::exists(out)) fs::remove_all(out);
    if (::rename(tmp.c_str(), out.c_str()) != 0) fail(who + ": cannot rename " + tmp + " to " + out);
    fsync_dir(fs::absolute(out).parent_path().string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

std::string read_file(const std::string& path, const std::string& hint) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + path + ": " + std::strerror(errno) + "; " + hint);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read " + path + ": " + std::strerror(errno) + "; " + hint);
  return ss.str();
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) fail("cannot open folder " + dir + " to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) fail("cannot sync folder " + dir + ": " + std::strerror(err));
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(temp_name(path_)) {
  enospc_ = fault_is("enospc", path_);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot write " + tmp_ + ": " + std::strerror(errno) + "; check the folder exists and is writable");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t w = enospc_ ? (errno = ENOSPC, -1) : ::write(fd_, p + done, bytes - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("cannot write " + path_ + ": " + std::strerror(errno) + "; free disk space (the previous file is kept)");
    }
    done += static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp_.c_str());
    fail("cannot flush " + path_ + ": " + err + "; free disk space (the previous file is kept)");
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp_.c_str());
    fail("cannot rename " + tmp_ + " to " + path_ + ": " + err);
  }
  fsync_dir(parent_of(path_));
  fault_point_after(path_);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

int remove_temp_files(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  const std::string mine = ".tmp." + std::to_string(::getpid());
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.rfind(".tmp.");
    if (at == std::string::npos || name.compare(at, std::string::npos, mine) == 0) continue;
    const std::string pid = name.substr(at + 5);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    fs::remove_all(e.path(), ec);
    if (!ec) ++n;
  }
  return n;
}

FolderLock::FolderLock(const std::string& dir, const std::string& what) {
  const std::string path = dir + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create " + path + ": " + std::strerror(errno) + "; check the folder is writable");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    ::close(fd_);
    fd_ = -1;
    fail(dir + " is in use by another " + what + " (PID " + (pid.empty() ? "unknown" : pid) +
         "); wait for it to finish, stop it, or choose another folder");
  }
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    // The lock holds regardless; the PID is only for the message of a second writer.
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the flock
}

}  // namespace moe
