import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// Atomic file writes for every output of the package (weights, configs, JSON records, images):
// the bytes go to a temporary file beside the target, which is fsynced and renamed over it, so a
// reader sees the old file or the new one, never half of one.
//
// Two rules on top of the rename:
// - Only a regular file (or nothing) is replaced. A rename over a symlink, FIFO or device node
//   would silently swap it for a regular file (as root, a system device), so those are errors.
// - Temporary files are named `.<name>.<pid>.<random>.tmp`. A write removes its own on any error;
//   those of killed processes (whose pid no longer runs) are removed by the next write to the path.

/// Throws unless `url` is absent or a regular file (`directory: true`: absent or a directory).
/// Symlinks are refused even when they point at a regular file: the rename would replace the link.
public func checkReplaceable(_ url: URL, directory: Bool = false) throws {
    var status = stat()
    guard lstat(url.path, &status) == 0 else {
        if errno == ENOENT { return }
        throw SafeTensorsError.writeFailed(file: url.path, reason: "cannot inspect the existing path: \(currentErrorMessage())")
    }
    let kind = status.st_mode & S_IFMT
    if kind == (directory ? S_IFDIR : S_IFREG) { return }
    let names: [mode_t: String] = [S_IFLNK: "a symbolic link", S_IFIFO: "a FIFO", S_IFCHR: "a character device",
                                   S_IFBLK: "a block device", S_IFSOCK: "a socket", S_IFDIR: "a directory", S_IFREG: "a regular file"]
    throw SafeTensorsError.writeFailed(
        file: url.path,
        reason: "the path is \(names[kind] ?? "not a regular file"); outputs only replace \(directory ? "folders" : "regular files"), so remove it or choose another path")
}

/// Removes temporary files that killed writes to `url` left beside it.
public func removeStaleTemporaryFiles(for url: URL) {
    let folder = url.deletingLastPathComponent()
    let prefix = ".\(url.lastPathComponent)."
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder.path) else { return }
    for name in names where name.hasPrefix(prefix) && name.hasSuffix(".tmp") {
        let middle = name.dropFirst(prefix.count).dropLast(4).split(separator: ".")
        // A live process's write in progress is left alone (kill(pid, 0) fails with ESRCH once it exited).
        if middle.count == 2, let pid = pid_t(middle[0]), kill(pid, 0) == 0 || errno != ESRCH { continue }
        unlink(folder.appendingPathComponent(name).path)
    }
}

/// Writes `url` atomically: checks that it may be replaced, cleans stale temporary files, calls
/// `body` with a descriptor of a new temporary file beside it, fsyncs, renames, fsyncs the folder.
/// On any error the temporary file is removed and `url` is untouched.
public func writeAtomically(to url: URL, _ body: (_ descriptor: Int32) throws -> Void) throws {
    let file = url.path
    try checkReplaceable(url)
    removeStaleTemporaryFiles(for: url)
    let temporaryPath = url.deletingLastPathComponent()
        .appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp").path
    let descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else {
        throw SafeTensorsError.writeFailed(file: file, reason: "cannot create \(temporaryPath): \(currentErrorMessage())")
    }
    var renamed = false
    defer { if !renamed { unlink(temporaryPath) } }
    do {
        defer { close(descriptor) }
        try body(descriptor)
        guard fsync(descriptor) == 0 else {
            throw SafeTensorsError.writeFailed(file: file, reason: "fsync: \(currentErrorMessage())")
        }
    }
    guard rename(temporaryPath, file) == 0 else {
        throw SafeTensorsError.writeFailed(file: file, reason: "rename: \(currentErrorMessage())")
    }
    renamed = true
    syncDirectory(of: url)
}

/// Writes `data` to `url` atomically (see `writeAtomically(to:_:)`).
public func writeAtomically(_ data: Data, to url: URL) throws {
    try writeAtomically(to: url) { descriptor in
        try data.withUnsafeBytes { try writeAll($0, to: descriptor, file: url.path) }
    }
}

func writeAll(_ bytes: UnsafeRawBufferPointer, to descriptor: Int32, file: String) throws {
    var written = 0
    while written < bytes.count {
        let result = write(descriptor, bytes.baseAddress! + written, bytes.count - written)
        if result < 0 {
            if errno == EINTR { continue }
            throw SafeTensorsError.writeFailed(file: file, reason: currentErrorMessage())
        }
        written += result
    }
}

/// Makes the rename itself durable. Best effort: some file systems refuse fsync on directories.
private func syncDirectory(of url: URL) {
    let descriptor = open(url.deletingLastPathComponent().path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return }
    fsync(descriptor)
    close(descriptor)
}
