// Creates an Azure Blob container with a Shared Key request (used by the
// Azurite test helper: object_store cannot create containers).
// Env: ENDPOINT (http://127.0.0.1:PORT/ACCOUNT), ACCOUNT, KEY (base64), CONTAINER.
const crypto = require("crypto");
const http = require("http");
const { ENDPOINT, ACCOUNT, KEY, CONTAINER } = process.env;
const url = new URL(`${ENDPOINT}/${CONTAINER}?restype=container`);
const date = new Date().toUTCString();
const version = "2021-08-06";
const toSign = [
  "PUT", "", "", "", "", "", "", "", "", "", "", "",
  `x-ms-date:${date}`,
  `x-ms-version:${version}`,
  `/${ACCOUNT}${url.pathname}\nrestype:container`,
].join("\n");
const sig = crypto
  .createHmac("sha256", Buffer.from(KEY, "base64"))
  .update(toSign, "utf8")
  .digest("base64");
const req = http.request(url, {
  method: "PUT",
  headers: {
    "x-ms-date": date,
    "x-ms-version": version,
    "Content-Length": 0,
    Authorization: `SharedKey ${ACCOUNT}:${sig}`,
  },
}, (res) => {
  let body = "";
  res.on("data", (d) => (body += d));
  res.on("end", () => {
    if (res.statusCode === 201 || res.statusCode === 409) process.exit(0);
    console.error(`create container: HTTP ${res.statusCode} ${body}`);
    process.exit(1);
  });
});
req.on("error", (e) => {
  console.error(`create container: ${e.message}`);
  process.exit(1);
});
req.end();
