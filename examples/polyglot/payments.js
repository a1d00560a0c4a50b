// An HTTP/JSON Baton participant in Node.js, built-in `http` module only (docs/HTTP.md).
//
// Actions: POST /payments/charge (409 when the amount is over the card limit) and
// POST /payments/refund (its compensation). Answers are kept by Idempotency-Key, so a
// redelivered call gets the first answer again. Usage: node payments.js [PORT] (default 9102).
const http = require("http");

const LIMIT = 100;
const charges = new Map(); // tx_id -> amount
const answers = new Map(); // Idempotency-Key -> [status, body]

function handle(path, call) {
  const payload = call.payload || {};
  if (path === "/payments/charge") {
    const amount = Number(payload.amount || 0);
    if (amount > LIMIT) return [409, { message: `amount ${amount} is over the limit of ${LIMIT}` }];
    // The earlier step's output arrives in `outputs`.
    const reservation = (call.outputs[0] || {}).output || {};
    charges.set(call.tx_id, amount);
    return [200, { charge: `c-${call.tx_id.slice(-6)}`, amount, for: reservation.reservation }];
  }
  if (path === "/payments/refund") {
    const amount = charges.get(call.tx_id) || 0;
    charges.delete(call.tx_id);
    return [200, { refunded: amount }];
  }
  return [404, { message: `no action ${path}` }];
}

http
  .createServer((req, res) => {
    if (req.method !== "POST") {
      res.writeHead(405).end();
      return;
    }
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const call = JSON.parse(body || "{}");
      const key = req.headers["idempotency-key"] || "";
      if (!answers.has(key)) answers.set(key, handle(req.url, call));
      const [status, reply] = answers.get(key);
      console.log(`payments: ${call.phase} ${req.url} attempt ${call.attempt} -> ${status}`);
      const data = JSON.stringify(reply);
      res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
      res.end(data);
    });
  })
  .listen(Number(process.argv[2] || 9102), "127.0.0.1");
