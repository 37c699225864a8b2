// swift-tools-version:6.0
import PackageDescription

// Kernels are compiled for the CPU that builds them: plain -O targets baseline x86-64 and lowers
// SIMD FMA to scalar calls (see ../shared/DESIGN.md). Every host builds from source, so this is safe;
// the micro-kernel is still chosen at run time so that both register blocks are tested everywhere.
// SWIFT_DDP_TARGET_CPU (an LLVM CPU name: haswell, znver2, skylake-avx512...) builds for another CPU instead,
// e.g. a cluster's compute nodes from its login node. On a host whose CPU lacks what the build uses,
// the programs stop with a line naming it (Support's BuildCPU) instead of dying of SIGILL in a kernel.
let targetCPU = Context.environment["SWIFT_DDP_TARGET_CPU"].flatMap { $0.isEmpty ? nil : $0 } ?? "native"
let nativeCPU: [SwiftSetting] = [.unsafeFlags(["-target-cpu", targetCPU])]
// The byte movers skip the run-time exclusivity checks on class properties: a 4 KiB allreduce between two
// ranks on shared memory is ~1.5 us, and each read of a Connection's fd or lane paid a thread-local
// access-set insertion (12 % of its cycles). Compile-time exclusivity checking stays on.
let uncheckedExclusivity: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "swift-ddp",
    products: [
        .executable(name: "ddp-train", targets: ["ddp-train"]),
        .executable(name: "kernels-bench", targets: ["kernels-bench"]),
        .executable(name: "ddp-launch", targets: ["ddp-launch"]),
        .executable(name: "allreduce-bench", targets: ["allreduce-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CNuma", path: "Sources/CNuma",
                       providers: [.apt(["libnuma-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CShims", cSettings: [.unsafeFlags(["-march=\(targetCPU)"]), .define("DDP_TARGET_CPU", to: "\"\(targetCPU)\"")]),
        .target(name: "Support", dependencies: ["CShims"]),
        .target(name: "Tensors", dependencies: ["CShims", "Support"], swiftSettings: nativeCPU),
        .target(name: "Transport", dependencies: ["CShims", "Support", .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: uncheckedExclusivity),
        .target(name: "Rendezvous", dependencies: ["Support", "Transport", "Topology"]),
        .target(name: "Collectives", dependencies: ["Rendezvous", "Transport", "CShims"], swiftSettings: nativeCPU + uncheckedExclusivity),
        .target(name: "NN", dependencies: ["Tensors", "CZlib", "Support"], swiftSettings: nativeCPU),
        .target(name: "Datasets", dependencies: ["Tensors", "CZlib"]),
        .target(name: "Parallel", dependencies: ["Support", "Collectives", "Rendezvous", "NN", "Tensors"]),
        .target(name: "Training", dependencies: ["Support", "NN", "Datasets", "Tensors", "Collectives", "Parallel", "Rendezvous", "Transport", "CShims"]),
        .target(name: "Topology", dependencies: ["CNuma", "CShims"]),
        .target(name: "Launch", dependencies: ["Rendezvous", "Transport", "CShims", "Topology", "Support"]),
        .executableTarget(name: "ddp-launch", dependencies: [
            "Launch", "Transport", "Topology", "Training", "Parallel",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "Bench", dependencies: ["Collectives", "Rendezvous", "Transport"]),
        .executableTarget(name: "allreduce-bench", dependencies: [
            "Bench", "Collectives", "Rendezvous", "Transport", "Topology", "Support",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "TestSupport", dependencies: ["Collectives", "NN", "Parallel", "Rendezvous", "Tensors", "Transport", "CShims"]),
        .executableTarget(name: "collective-check", dependencies: [
            "TestSupport", "Collectives", "Rendezvous", "Transport", "Topology", "Parallel", "NN", "Support",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "ddp-train", dependencies: [
            "Support", "Training", "NN", "Datasets", "Rendezvous", "Topology", "Transport", "Collectives", "Parallel",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "kernels-bench", dependencies: [
            "Tensors", "NN", "Support",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: nativeCPU),
        .executableTarget(name: "fault-suite", dependencies: [
            "NN", "TestSupport", "Transport", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "FuzzTargets", dependencies: ["Datasets", "NN", "Rendezvous", "Training", "Transport"]),
        .executableTarget(name: "ddp-fuzz", dependencies: [
            "FuzzTargets", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "FuzzTests", dependencies: ["FuzzTargets", "NN"]),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "Support"]),
        .testTarget(name: "SupportTests", dependencies: ["Support"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "Tensors"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "NN", "Datasets", "Tensors", "Transport", "Collectives", "TestSupport", "ddp-train", "ddp-launch", "collective-check"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "Rendezvous", "Launch", "Topology", "TestSupport", "ddp-launch"]),
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "Rendezvous", "Transport", "TestSupport", "collective-check", "ddp-launch"]),
        .testTarget(name: "TopologyTests", dependencies: ["Topology"]),
        .testTarget(name: "ParallelTests", dependencies: ["Parallel"], exclude: ["Golden"]),
        .testTarget(name: "BenchTests", dependencies: ["Bench", "Collectives", "TestSupport", "ddp-launch", "allreduce-bench"]),
        .testTarget(name: "MultiHostTests", dependencies: ["NN", "TestSupport", "ddp-launch", "ddp-train", "collective-check"]),
    ],
    swiftLanguageModes: [.v6]
)
