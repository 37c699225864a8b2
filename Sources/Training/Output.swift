#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to standard output at once with write(2): no stdio buffer, so lines reach the
/// launcher (which prefixes them per rank) in order and are not lost if the process is killed.
public func emitLine(_ line: String, to fd: Int32 = STDOUT_FILENO) {
    var bytes = Array(line.utf8)
    bytes.append(0x0A)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        done += n
    }
}
