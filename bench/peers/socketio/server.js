// A Socket.IO chat server written the way the socket.io docs recommend: a JWT checked in a
// middleware (io.use), one room per chat (socket.join), messages broadcast to the room
// (socket.to(room).emit) and confirmed with an acknowledgement callback, and the built-in
// connection state recovery for clients that come back after a short disconnection.
//
// Everything is in memory: a message is acked once it has been handed to the room's
// sockets; nothing is written to disk, and a restart loses the per-room sequence numbers and
// the recovery buffer. This is what teams who write their own Socket.IO chat server
// typically start from (persistence would be their own database call before the ack).
//
//   PORT=18400 SECRET=benchsecret node server.js      # RECOVERY=0 turns recovery off
"use strict";
const { createServer } = require("node:http");
const crypto = require("node:crypto");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 18400);
const host = process.env.HOST || "127.0.0.1";
const secret = process.env.SECRET || "benchsecret";
const recovery = process.env.RECOVERY !== "0";

// HS256 JWT with `sub` and `exp`, the same tokens Tern and Centrifugo accept.
function verify(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const mac = crypto.createHmac("sha256", secret).update(parts[0] + "." + parts[1]).digest("base64url");
  const a = Buffer.from(mac), b = Buffer.from(parts[2]);
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return null;
  try {
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    if (!claims.sub || !(claims.exp > Date.now() / 1000)) return null;
    return claims;
  } catch {
    return null;
  }
}

const httpServer = createServer((req, res) => {
  if (req.url === "/healthz") { res.writeHead(200); res.end("ok"); return; }
  res.writeHead(404); res.end();
});
const io = new Server(httpServer, {
  serveClient: false,
  // Clients that are away for up to 2 minutes get the packets they missed on reconnect.
  connectionStateRecovery: recovery ? { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true } : undefined,
});

io.use((socket, next) => {
  const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
  if (!claims) return next(new Error("unauthorized"));
  socket.data.userId = Number(claims.sub);
  next();
});

// Per-room sequence numbers, so clients can see order and gaps (in memory).
const seqs = new Map();

io.on("connection", (socket) => {
  // join: { chat_id } → ack { ok }. (The chat's membership lives in the app's database in a
  // real server; here any authenticated user may join any room.)
  socket.on("join", (req, ack) => {
    socket.join("c" + req.chat_id);
    if (typeof ack === "function") ack({ ok: true });
  });
  // message: { chat_id, content, client_msg_id } → broadcast to the room, ack to the sender.
  socket.on("message", (msg, ack) => {
    const room = "c" + msg.chat_id;
    if (!socket.rooms.has(room)) {
      if (typeof ack === "function") ack({ error: "not_a_member", client_msg_id: msg.client_msg_id });
      return;
    }
    const seq = (seqs.get(room) || 0) + 1;
    seqs.set(room, seq);
    socket.to(room).emit("message", {
      chat_id: msg.chat_id,
      seq,
      sender_id: socket.data.userId,
      content: msg.content,
      client_msg_id: msg.client_msg_id,
      created_at: new Date().toISOString(),
    });
    if (typeof ack === "function") ack({ client_msg_id: msg.client_msg_id, seq });
  });
});

httpServer.listen(port, host, () => {
  console.log(`socket.io ${require("socket.io/package.json").version} on ${host}:${port}, recovery ${recovery ? "on" : "off"}`);
});
