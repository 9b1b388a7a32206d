import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What a finished command printed and how it exited.
public struct CommandResult: Sendable {
    public var exitCode: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs the built `dmirr` binary (next to the test bundle) and other commands, as real processes.
public enum CLI {
    /// `.build/debug/dmirr`: the test bundle and the executable are built into the same directory.
    public static var dmirrPath: String {
        if let override = ProcessInfo.processInfo.environment["DMIRR_BIN"] { return override }
        let dir = Bundle.main.bundleURL.deletingLastPathComponent().path
        for candidate in [dir + "/dmirr", Bundle.main.bundleURL.path + "/dmirr"] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return dir + "/dmirr"
    }

    /// Runs `dmirr ARGS…` to completion (killed after `timeout` seconds).
    public static func dmirr(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 120) throws -> CommandResult {
        try run(dmirrPath, arguments, environment: environment, timeout: timeout)
    }

    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], timeout: Double = 120) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
        process.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let outData = ReadAll(out.fileHandleForReading)
        let errData = ReadAll(err.fileHandleForReading)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return CommandResult(exitCode: process.terminationStatus, stdout: outData.wait(), stderr: errData.wait())
    }
}

/// Drains a pipe on a background thread so a chatty child never blocks.
final class ReadAll: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    func wait() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}

/// A `dmirr` process running in its own process group, so a test can `kill -9` it together with the rsync it
/// started, as a crash or an OOM kill would. (Foundation's `Process` already makes the child a process-group leader on
/// Linux; the initializer checks that, because `setsid(1)` would fork in that case and hand us the wrong pid.)
public final class SpawnedDmirr: @unchecked Sendable {
    public let process: Process
    private let errLog: String

    /// - Parameter wrapper: a command that execs dmirr in its place (`setpriv --reuid=…` to run it unprivileged).
    public init(_ arguments: [String], environment: [String: String] = [:], wrapper: [String] = [], logDirectory: String) throws {
        errLog = logDirectory + "/dmirr-\(UUID().uuidString.prefix(6)).stderr"
        _ = FileManager.default.createFile(atPath: errLog, contents: nil)
        process = Process()
        if let launcher = wrapper.first {
            process.executableURL = URL(fileURLWithPath: launcher)
            process.arguments = Array(wrapper.dropFirst()) + [CLI.dmirrPath] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: CLI.dmirrPath)
            process.arguments = arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: errLog)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        guard getpgid(process.processIdentifier) == process.processIdentifier else {
            kill(process.processIdentifier, SIGKILL)
            throw TestFailure("dmirr (pid \(process.processIdentifier)) is not a process-group leader; cannot kill its group")
        }
    }

    public var pid: Int32 { process.processIdentifier }
    public var stderr: String { (try? String(contentsOfFile: errLog, encoding: .utf8)) ?? "" }

    /// Waits (at most `seconds`) until `condition` holds; false on timeout or if the process exited first.
    public func wait(upTo seconds: Double, until condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            if !process.isRunning { return condition() }
            usleep(20_000)
        }
        return false
    }

    /// SIGKILL to the whole process group: dmirr and its rsync children.
    public func killGroup() {
        kill(-pid, SIGKILL)
        process.waitUntilExit()
        // rsync children are in the same group and die with it; give the kernel a moment to reap them.
        usleep(100_000)
    }

    public func waitForExit(seconds: Double = 60) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(-pid, SIGKILL); process.waitUntilExit(); return nil }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(-pid, SIGKILL) }
    }
}

/// The real dnf client reading a mirror, with its own install root so the host's repos and cache play no part.
public enum Dnf {
    /// `NAME-VERSION-RELEASE` of every available package in the repo at `repo` (all versions).
    public static func availablePackages(repo: String) throws -> [String] {
        let root = try TestDirectory("dnf")
        defer { root.remove() }
        try FileManager.default.createDirectory(atPath: root.path + "/etc/dnf", withIntermediateDirectories: true)
        try "[main]\n".write(toFile: root.path + "/etc/dnf/dnf.conf", atomically: true, encoding: .utf8)
        let result = try CLI.run("dnf", [
            "-q", "--installroot=\(root.path)", "--setopt=reposdir=/nonexistent", "--noplugins", "--releasever=0",
            "--nogpgcheck", "--setopt=skip_if_unavailable=False", "--repofrompath=m,file://\(repo)", "--repo=m",
            "repoquery", "--available", "--showduplicates", "--qf", "%{name}-%{version}-%{release}",
        ], timeout: 120)
        guard result.exitCode == 0 else {
            throw TestFailure("dnf failed (exit \(result.exitCode)): \(result.stderr)")
        }
        return result.stdout.split(separator: "\n").map(String.init).sorted()
    }
}

extension Dnf {
    /// Runs dnf against one repository given by `metalink=URL`, in a fresh install root and cache (so nothing is
    /// reused between runs), with `arguments` as the command (`makecache`, `repoquery …`).
    public static func withMetalink(_ url: String, _ arguments: [String]) throws -> CommandResult {
        let root = try TestDirectory("dnf")
        defer { root.remove() }
        for dir in ["/etc/yum.repos.d", "/etc/dnf"] {
            try FileManager.default.createDirectory(atPath: root.path + dir, withIntermediateDirectories: true)
        }
        try "[main]\n".write(toFile: root.path + "/etc/dnf/dnf.conf", atomically: true, encoding: .utf8)
        try """
            [fleet]
            name=fleet
            metalink=\(url)
            gpgcheck=0
            skip_if_unavailable=False
            """.write(toFile: root.path + "/etc/yum.repos.d/fleet.repo", atomically: true, encoding: .utf8)
        return try CLI.run("dnf", [
            "--installroot=\(root.path)", "--setopt=reposdir=\(root.path)/etc/yum.repos.d", "--noplugins", "--releasever=0",
            "--setopt=cachedir=\(root.path)/cache", "--repo=fleet",
        ] + arguments, timeout: 180)
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Raw IPv4 sockets for tests that play a client or a server below TLS (slow connections, a port that answers and
/// closes).
public enum RawSocket {
    /// Binds `fd` to `ip`:`port` (port 0: any).
    public static func bind(_ fd: Int32, _ ip: String, port: Int = 0) -> Bool { call(fd, ip, port, Glibc.bind) }

    /// Connects `fd` to `ip`:`port`, blocking.
    public static func connect(_ fd: Int32, _ ip: String, port: Int) -> Bool { call(fd, ip, port, Glibc.connect) }

    private static func call(_ fd: Int32, _ ip: String, _ port: Int, _ f: (Int32, UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Bool {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr(ip)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { f(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
