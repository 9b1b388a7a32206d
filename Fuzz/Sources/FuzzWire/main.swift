import DmirrWire
import NIOCore

/// Feeds arbitrary bytes to the frame decoder, in two reads split at a point the input chooses, and every complete
/// frame to the message decoder. Any crash, trap, leak or allocation over -malloc_limit_mb is a bug: bad input must
/// only ever produce an error.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    guard let first = bytes.first else { return 0 }
    let split = Int(first) % (count)  // where the first read ends
    let limit = 4096
    var buffer = ByteBuffer()
    for chunk in [bytes[1..<max(1, split)], bytes[max(1, split)...]] {
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: chunk))
        while true {
            do {
                guard let frame = try Framing.nextFrame(from: &buffer, limit: limit) else { break }
                precondition(frame.readableBytes > 0 && frame.readableBytes <= limit, "frame outside its limits")
                if let envelope = try? WireMessages.decode(frame) {
                    // A decoded message must encode again.
                    _ = try! WireMessages.encode(envelope)
                }
            } catch {
                return 0  // a framing error closes the connection: fine
            }
        }
    }
    return 0
}
