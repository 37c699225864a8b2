import CNuma

/// Whether the kernel and libnuma support NUMA policy calls here (wraps `numa_available()`,
/// which returns -1 when they do not).
public func numaIsAvailable() -> Bool { numa_available() >= 0 }
