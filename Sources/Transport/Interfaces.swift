#if canImport(Glibc)
import Glibc
#endif

/// Which local address a rank listens on and advertises to its peers. On one host that is the
/// master's (loopback) address; across hosts it must be an address the peers can reach: the one of
/// the interface the user names, or else the source address the kernel would use to reach the master.
public enum LocalAddress {
    /// Numeric addresses (IPv4 first) of interface `name` ("eth0"), from getifaddrs.
    public static func addresses(ofInterface name: String) throws -> [String] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else {
            throw TransportError(.system(call: "getifaddrs", errno: errno), operation: "look up interface \(name)")
        }
        defer { freeifaddrs(list) }
        var v4: [String] = [], v6: [String] = []
        var node: UnsafeMutablePointer<ifaddrs>? = first
        while let n = node {
            defer { node = n.pointee.ifa_next }
            guard String(cString: n.pointee.ifa_name) == name, let address = n.pointee.ifa_addr else { continue }
            let family = Int32(address.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            var storage = sockaddr_storage()
            let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length))) }
            let host = Socket.describe(storage, length).host
            if family == AF_INET { v4.append(host) } else if !host.hasPrefix("fe80") { v6.append(host) }
        }
        return v4 + v6
    }

    /// The source address the kernel picks to reach host:port (a UDP connect sends nothing).
    public static func route(towards host: String, port: Int) throws -> String {
        let operation = "find the local address that routes to \(host)"
        let candidates = try Socket.resolve(host: host, port: max(port, 1), passive: false, operation: operation)
        var lastErrno: Int32 = 0
        for var candidate in candidates {
            let fd = socket(candidate.family, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { lastErrno = errno; continue }
            defer { close(fd) }
            let connected = withUnsafePointer(to: &candidate.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, candidate.length) }
            }
            guard connected == 0 else { lastErrno = errno; continue }
            var local = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            if named == 0 { return Socket.describe(local, length).host }
            lastErrno = errno
        }
        throw TransportError(.system(call: "connect", errno: lastErrno), operation: operation)
    }

    /// The address ranks on this node listen on: `interface`'s first address when given, else the
    /// address routing to the master (loopback when the master is on this host).
    public static func choose(interface: String?, master: String, port: Int) throws -> (address: String, reason: String) {
        if let interface {
            guard let first = try addresses(ofInterface: interface).first else {
                throw TransportError(.rendezvous("interface '\(interface)' does not exist or has no IP address"), operation: "choose the listen address")
            }
            return (first, "interface \(interface)")
        }
        let routed = try route(towards: master, port: port)
        return (routed, "routes to the master \(master)")
    }
}
