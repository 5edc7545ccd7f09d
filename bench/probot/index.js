// The minimal Probot app of bench/webhook_load.py: verify the signature and
// acknowledge, nothing else. Probot's own server (`probot run`) serves it at
// /api/github/webhooks; the handler makes no GitHub call, so the fake App
// credentials are never used (GHE_HOST points any stray call at loopback).
export default (app) => {
  app.on("pull_request.closed", async () => {});
};
