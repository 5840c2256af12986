/*
 * wslb-client.js: a WebSocket through wslb that tells its user about the
 * queue. Small and dependency-free; served by wslb at [queue] client_path.
 *
 *   var client = wslb.connect({
 *     url: "wss://play.example.com/scene",   // the WebSocket, through wslb
 *     key: signedKey,                          // optional: minted here when absent
 *     onQueue: function (q) { ... },           // {position, length, eta} while queued
 *     onOpen: function (socket) { ... },
 *     onMessage: function (event) { ... },
 *     onClose: function (event, reconnecting) { ... },
 *     finalCodes: [1000, 4000],                // close codes after which it stays closed
 *   });
 *   client.key; client.send(data); client.close();
 *
 * The key goes in the query (?session=KEY; `keyParam` names another), the
 * same on every reconnect: a user whose connection drops keeps its session,
 * and while queued keeps its place ([queue] rejoin_grace). While the
 * handshake is held in the queue, the queue's events
 * (`statusUrl`, by default /wslb/queue on the WebSocket's host) say the
 * position; `eta` is in seconds, or null while wslb has no estimate. A key
 * minted here is kept in sessionStorage (`storage: null` to not), so a
 * reloaded tab keeps its place too. With [session] secret set on wslb, pass a
 * signed key from your backend (a minted one is refused).
 */
(function (root) {
  "use strict";

  var MIN_DELAY = 500, MAX_DELAY = 30000;  // ms between reconnects, doubling
  var STEADY = 10000;  // ms open after which the next drop reconnects quickly again
  var QUEUE_AFTER = 300;  // ms: a handshake not answered by then is probably queued
  var FINAL_CODES = [1000, 4000];  // closed on purpose (4000: wslb's end_close_code)

  function mintKey() {
    var bytes = new Uint8Array(24), text = "";
    root.crypto.getRandomValues(bytes);
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    var key = root.btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    return key.indexOf("eyJ") === 0 ? mintKey() : key;  // "eyJ" would pass for a JWT
  }

  function withQuery(url, name, value) {
    return url + (url.indexOf("?") < 0 ? "?" : "&") + name + "=" + encodeURIComponent(value);
  }

  function statusUrlOf(wsUrl) {
    var u = new URL(wsUrl, root.location && root.location.href);
    return (u.protocol === "wss:" ? "https://" : "http://") + u.host + "/wslb/queue";
  }

  function storedKey(storage, name) {
    try { return storage && storage.getItem(name); } catch (e) { return null; }
  }

  function Client(options) {
    this.options = options;
    this.keyParam = options.keyParam || "session";
    this.statusUrl = options.statusUrl || statusUrlOf(options.url);
    var storage = options.storage === undefined ? root.sessionStorage : options.storage;
    var storageName = "wslb-key:" + options.url;
    this.key = options.key || storedKey(storage, storageName);
    if (!this.key) {
      this.key = mintKey();
      try { if (storage) storage.setItem(storageName, this.key); } catch (e) { /* private mode */ }
    }
    this.socket = null;
    this._delay = MIN_DELAY;
    this._closed = false;
    this._events = null;
    this._timers = {};
    this._open();
  }

  Client.prototype._call = function (name) {
    var callback = this.options[name];
    if (callback) callback.apply(null, Array.prototype.slice.call(arguments, 1));
  };

  Client.prototype._later = function (name, ms, run) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(run, ms);
  };

  Client.prototype._open = function () {
    var self = this, openedAt = null;
    var socket = this.socket = new WebSocket(
      withQuery(this.options.url, this.keyParam, this.key), this.options.protocols);
    if (this.options.binaryType) socket.binaryType = this.options.binaryType;
    this._later("queue", QUEUE_AFTER, function () { self._followQueue(); });
    socket.onopen = function () {
      openedAt = Date.now();
      self._stopFollowing();
      self._call("onOpen", socket);
    };
    socket.onmessage = function (event) { self._call("onMessage", event); };
    socket.onclose = function (event) {
      self._stopFollowing();
      if (openedAt !== null && Date.now() - openedAt > STEADY) self._delay = MIN_DELAY;
      var final = self.options.finalCodes || FINAL_CODES;
      var again = !self._closed && final.indexOf(event.code) < 0;
      self._call("onClose", event, again);
      if (again) {
        var delay = self._delay * (0.75 + Math.random() / 2);
        self._delay = Math.min(self._delay * 2, MAX_DELAY);
        self._later("reconnect", delay, function () { self._open(); });
      }
    };
  };

  // While the handshake is held, the queue's events tell the position.
  Client.prototype._followQueue = function () {
    var self = this;
    if (this._events || !this.socket || this.socket.readyState !== WebSocket.CONNECTING) return;
    var events = this._events = new EventSource(
      withQuery(this.statusUrl + "/events", this.keyParam, this.key));
    events.onmessage = function (message) {
      var status = JSON.parse(message.data);
      if (status.queued) {
        self._call("onQueue", {position: status.position, length: status.length,
                               eta: status.eta_seconds});
      } else if (status.ready) {
        self._stopFollowing();
      }
    };
  };

  Client.prototype._stopFollowing = function () {
    clearTimeout(this._timers.queue);
    if (this._events) {
      this._events.close();
      this._events = null;
    }
  };

  Client.prototype.send = function (data) {
    this.socket.send(data);
  };

  Client.prototype.close = function (code, reason) {
    this._closed = true;
    clearTimeout(this._timers.reconnect);
    this._stopFollowing();
    if (this.socket) this.socket.close(code || 1000, reason);
  };

  root.wslb = {connect: function (options) { return new Client(options); }, mintKey: mintKey};
})(typeof window !== "undefined" ? window : this);
