#if canImport(Glibc)
import Glibc
#endif

/// TCP socket set-up over Glibc: resolve, listen, accept and connect, IPv4 or IPv6, every wait bounded.
public enum Socket {
    /// Socket buffer size asked for on every connection: large enough to keep a loopback or LAN link busy
    /// while the other side reduces a chunk.
    public static let bufferBytes: Int32 = 8 << 20

    /// Resolved addresses for host:port (numeric or name), IPv4 and IPv6.
    static func resolve(host: String?, port: Int, passive: Bool, operation: String) throws -> [(storage: sockaddr_storage, length: socklen_t, family: Int32)] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var list: UnsafeMutablePointer<addrinfo>?
        let code = getaddrinfo(host, String(port), &hints, &list)
        guard code == 0, let first = list else {
            let reason = String(cString: gai_strerror(code))
            throw TransportError(.rendezvous("cannot resolve \(host ?? "*"):\(port): \(reason)"), operation: operation)
        }
        defer { freeaddrinfo(list) }
        var out: [(sockaddr_storage, socklen_t, Int32)] = []
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let n = node {
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: n.pointee.ai_addr, count: Int(n.pointee.ai_addrlen)))
            }
            out.append((storage, n.pointee.ai_addrlen, n.pointee.ai_family))
            node = n.pointee.ai_next
        }
        return out
    }

    /// Host and port of a socket address, numeric.
    static func describe(_ storage: sockaddr_storage, _ length: socklen_t) -> (host: String, port: Int) {
        var storage = storage
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let code = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count), NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard code == 0 else { return ("?", 0) }
        func text(_ chars: [CChar]) -> String {
            String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return (text(host), Int(text(service)) ?? 0)
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, operation: String) throws {
        var v = value
        _ = try systemCall("setsockopt", operation, peer: nil) {
            Int(setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)))
        }
    }

    static func configure(_ fd: Int32, operation: String) throws {
        try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, operation: operation)
        try setOption(fd, SOL_SOCKET, SO_SNDBUF, bufferBytes, operation: operation)
        try setOption(fd, SOL_SOCKET, SO_RCVBUF, bufferBytes, operation: operation)
        try setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1, operation: operation)
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Connects to host:port, retrying refusals until the deadline (the listener may not be up yet).
    /// Returns a non-blocking, configured descriptor.
    public static func connect(host: String, port: Int, deadline: Deadline, peer: PeerDescription,
                               operation: String) throws -> Int32 {
        var lastError: TransportError?
        var backoff = Backoff(first: 250, growth: 1.5, cap: 100_000)
        while true {
            for address in try resolve(host: host, port: port, passive: false, operation: operation) {
                let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else {
                    throw TransportError(.system(call: "socket", errno: errno), operation: operation, peer: peer)
                }
                do {
                    try configure(fd, operation: operation)
                    setNonBlocking(fd)
                    var storage = address.storage
                    let result = withUnsafePointer(to: &storage) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, address.length) }
                    }
                    if result != 0 && errno != EINPROGRESS && errno != EINTR {
                        throw TransportError(.system(call: "connect", errno: errno), operation: operation, peer: peer)
                    }
                    var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)]
                    while fds[0].revents == 0 {
                        try waitForSockets(&fds, spinUntil: 0, deadline: deadline, operation: operation, peer: peer)
                    }
                    var soError: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
                    if soError != 0 {
                        throw TransportError(.system(call: "connect", errno: soError), operation: operation, peer: peer)
                    }
                    return fd
                } catch let error as TransportError {
                    close(fd)
                    lastError = error
                }
            }
            if deadline.hasPassed {
                throw lastError ?? TransportError(.timedOut(seconds: deadline.seconds), operation: operation, peer: peer)
            }
            // Under srun or mpirun every rank starts at once and rank 0's store listens a few ms
            // later: retry finely at first (a refused loopback connect costs microseconds), then back off.
            backoff.wait()
        }
    }
}

/// A listening socket bound to an address (port 0 picks a free port; `port` tells which).
public final class Listener: @unchecked Sendable {
    public private(set) var fd: Int32
    public let host: String
    public let port: Int

    /// Binds host:port; `bindRetrySeconds` retries EADDRINUSE that long (a fixed port that a previous
    /// attempt of the same job released a moment ago).
    public convenience init(host: String, port: Int = 0, backlog: Int32 = 128, bindRetrySeconds: Double) throws {
        let deadline = Deadline(seconds: bindRetrySeconds)
        while true {
            do {
                try self.init(host: host, port: port, backlog: backlog)
                return
            } catch let error as TransportError {
                guard case .system("bind", EADDRINUSE) = error.kind, port != 0, !deadline.hasPassed else { throw error }
                usleep(50_000)
            }
        }
    }

    public init(host: String, port: Int = 0, backlog: Int32 = 128) throws {
        let operation = "listen on \(host):\(port)"
        (fd, self.port) = try Self.onFirstBindable(host: host, port: port, operation: operation) { fd in
            guard listen(fd, backlog) == 0 else { throw TransportError(.system(call: "listen", errno: errno), operation: operation) }
            var actual = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            withUnsafeMutablePointer(to: &actual) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
            }
            Socket.setNonBlocking(fd)
            return (fd, Socket.describe(actual, length).port)
        }
        self.host = host
    }

    /// Tries each address host:port resolves to in turn: a socket bound with the listener's options is
    /// handed to `use`, which owns it once it returns; when binding or `use` throws, the socket is closed
    /// and the next address tried. Throws the last error when none works.
    private static func onFirstBindable<T>(host: String, port: Int, operation: String, _ use: (Int32) throws -> T) throws -> T {
        var lastError: TransportError?
        for address in try Socket.resolve(host: host, port: port, passive: true, operation: operation) {
            let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { lastError = TransportError(.system(call: "socket", errno: errno), operation: operation); continue }
            do {
                try bind(fd, address, operation: operation)
                return try use(fd)
            } catch let error as TransportError {
                Glibc.close(fd)
                lastError = error
            }
        }
        throw lastError ?? TransportError(.rendezvous("no address to listen on for \(host)"), operation: operation)
    }

    /// Binds fd to address with the listener's options.
    private static func bind(_ fd: Int32, _ address: (storage: sockaddr_storage, length: socklen_t, family: Int32), operation: String) throws {
        try Socket.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, operation: operation)
        // Buffers set on the listener are inherited by accepted sockets before the handshake,
        // which lets TCP window scaling use them.
        try Socket.setOption(fd, SOL_SOCKET, SO_RCVBUF, Socket.bufferBytes, operation: operation)
        var storage = address.storage
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, address.length) }
        }
        guard bound == 0 else { throw TransportError(.system(call: "bind", errno: errno), operation: operation) }
    }

    /// Throws what `init` would if host:port cannot be bound now, found by binding without listening: a
    /// probe that listened took the connection of a peer that started early and reset it on close (a
    /// rank whose launcher started before the master's failed its handshake with the store: "connection
    /// reset by peer"); a socket that is only bound refuses it, and the peer retries.
    public static func checkBindable(host: String, port: Int) throws {
        try onFirstBindable(host: host, port: port, operation: "listen on \(host):\(port)") { fd in _ = Glibc.close(fd) }
    }

    deinit { close() }

    /// Wakes every thread blocked in `accept` on this listener (they fail with EINVAL); the port stays
    /// bound until `close`.
    public func shutdown() { if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) } }

    /// Releases the port. Call only when no thread is inside `accept`.
    public func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// One step of an accept loop that must keep going: a connection, or nil when none came within
    /// `slice` seconds or accepting failed. A failure (EMFILE, ENFILE, ENOBUFS: the connection stays in
    /// the backlog) is logged and waited out with `backoff`, which carries the pause between calls and
    /// starts again after a connection. When `stopping` holds, a failure is the caller's own shutdown:
    /// nil at once, nothing logged.
    public func acceptOrBackOff(slice: Double, backoff: inout Backoff, operation: String,
                                stopping: () -> Bool, log: (String) -> Void) -> (fd: Int32, host: String, port: Int)? {
        do {
            let accepted = try accept(deadline: Deadline(seconds: slice), operation: operation)
            backoff.reset()
            return accepted
        } catch let error as TransportError {
            if case .timedOut = error.kind { return nil }
            if stopping() { return nil }
            log("\(error); retrying in \(backoff.pause / 1000) ms")
            backoff.wait()
            return nil
        } catch {
            return nil
        }
    }

    /// Waits up to the deadline for one connection; returns a configured, non-blocking descriptor and
    /// the peer's numeric address.
    public func accept(deadline: Deadline, operation: String) throws -> (fd: Int32, host: String, port: Int) {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(self.fd, $0, &length) }
            }
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                try Socket.configure(fd, operation: operation)
                Socket.setNonBlocking(fd)
                let (h, p) = Socket.describe(storage, length)
                return (fd, h, p)
            }
            let code = errno
            if code == EINTR || code == ECONNABORTED { continue }
            guard code == EAGAIN || code == EWOULDBLOCK else {
                throw TransportError(.system(call: "accept", errno: code), operation: operation)
            }
            var fds = [pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0)]
            try waitForSockets(&fds, spinUntil: 0, deadline: deadline, operation: operation, peer: nil)
        }
    }
}
