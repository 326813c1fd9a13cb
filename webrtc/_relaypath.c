/* The relay's per-packet fast path in C: one readiness of one relay socket, handled in one call.

Hand-written C because no library relays RTP between sockets with SRTP on one side per packet
inside a Python event loop: rtpengine and the like are whole daemons, and libsrtp only does the
cryptography (called here through pylibsrtp's own copy, by the function and context addresses
webrtc.srtp hands over, so nothing extra is linked).

A RelayPump is the socket's reader: in a RelayPoller's epoll set, whose one fd is the event
loop's reader for all relay sockets (webrtc.datagram.SocketPoller), or registered itself
(loop.add_reader(fd, pump)) without one. No Python frame runs per readiness. It reads a datagram and, when it is configured to relay (relay()) and
the datagram is RTP of a payload type it has a route for, unprotects or protects it, rewrites
the payload type, counts it as webrtc.forwarding.Forwarder does and sends it on the
destination pump's socket. Everything else goes, unchanged, to the Python path the socket would
take without a pump: on_packet(packet) when set, else on_datagram(packet, source_address).
webrtc/relay_pumps.py decides when a pump may relay and keeps it configured.

Strict source: a pump given a `source` address (a plain leg's latched peer) relays, and hands
to on_packet, only datagrams from that address; every other datagram goes to
on_datagram(packet, source_address), where the leg's latching rule drops it or learns its
sender (webrtc.plain.LatchPolicy). So injected packets are never relayed in C. It costs a
recvfrom instead of a recv and an address comparison per datagram. `source_packets` counts
the datagrams from the source (the leg reads liveness from it).

Counters: loss is counted on a SequenceTable, one per Forwarder while its pumps relay, shared
by all of them (an ICE restart's old and new sockets feed one Forwarder) and used by the
Forwarder's own Python path meanwhile (webrtc.forwarding), so the count stays continuous
whichever path a packet takes. It keeps SSRC -> expected sequence number in a C array, no
Python object per packet; the Forwarder's dict gets an SSRC's key as soon as the table first
sees it (RTCP routing reads the keys) and the current values on write_back(): on the pumps'
flush, stop and reconfiguration. Packets, bytes and lost accumulate in the pump and are added to
the direction's DirectionStats on flush(), on reconfiguration and on close.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#define MAX_DATAGRAM 2048        /* webrtc.datagram._MAX_DATAGRAM: larger ones arrive truncated */
#define MAX_SRTP_TRAILER 148     /* >= pylibsrtp.SRTP_MAX_TRAILER_LEN, checked in relay() */
#define DRAIN_LIMIT 32           /* webrtc.datagram._DRAIN_LIMIT */
#define POLL_BATCH 64            /* ready sockets served per RelayPoller call */
#define PAYLOAD_TYPES 128
#define MAX_DESTINATIONS 8       /* a session's plain legs: one per media kind */
#define RTP_HEADER 12
#define MAX_SSRCS 32             /* webrtc.forwarding.MAX_TRACKED_SSRCS */
#define LOSS_HORIZON 1000        /* larger sequence jumps are reordering or a restarted sender */

/* -- sequence table ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *expected_seq;  /* the Forwarder's dict: keys kept current, values on write_back */
    int max_ssrcs;
    int count;
    uint32_t ssrcs[MAX_SSRCS];
    uint16_t expected[MAX_SSRCS];
    unsigned char dirty[MAX_SSRCS];  /* value newer than the dict's */
} SequenceTable;

static PyTypeObject SequenceTableType;

/* A new SSRC, as the Forwarder adds one: a full table (someone spraying junk) starts over. */
static int table_insert(SequenceTable *self, uint32_t ssrc, uint16_t next) {
    if (self->count >= self->max_ssrcs) {
        PyDict_Clear(self->expected_seq);
        self->count = 0;
    }
    PyObject *key = PyLong_FromUnsignedLong(ssrc);
    PyObject *value = key == NULL ? NULL : PyLong_FromLong(next);
    int failed = value == NULL || PyDict_SetItem(self->expected_seq, key, value) < 0;
    Py_XDECREF(key);
    Py_XDECREF(value);
    if (failed) {
        return -1;
    }
    self->ssrcs[self->count] = ssrc;
    self->expected[self->count] = next;
    self->dirty[self->count] = 0;
    self->count++;
    return 0;
}

/* The sequence gap this packet shows (0 or the packets lost before it), as
   webrtc.forwarding.Forwarder counts it; -1 with an exception set. */
static long table_count(SequenceTable *self, uint32_t ssrc, uint16_t seq) {
    uint16_t next = (uint16_t)(seq + 1);
    for (int i = 0; i < self->count; i++) {
        if (self->ssrcs[i] == ssrc) {
            long gap = (uint16_t)(seq - self->expected[i]);
            self->expected[i] = next;
            self->dirty[i] = 1;
            return gap < LOSS_HORIZON ? gap : 0;
        }
    }
    return table_insert(self, ssrc, next) < 0 ? -1 : 0;
}

static int table_write_back(SequenceTable *self) {
    for (int i = 0; i < self->count; i++) {
        if (!self->dirty[i]) {
            continue;
        }
        PyObject *key = PyLong_FromUnsignedLong(self->ssrcs[i]);
        PyObject *value = key == NULL ? NULL : PyLong_FromLong(self->expected[i]);
        int failed = value == NULL || PyDict_SetItem(self->expected_seq, key, value) < 0;
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (failed) {
            return -1;
        }
        self->dirty[i] = 0;
    }
    return 0;
}

static int table_init(SequenceTable *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"expected_seq", "max_ssrcs", NULL};
    PyObject *expected_seq;
    int max_ssrcs;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!i", keywords, &PyDict_Type, &expected_seq,
                                     &max_ssrcs)) {
        return -1;
    }
    if (max_ssrcs < 1 || max_ssrcs > MAX_SSRCS) {
        PyErr_Format(PyExc_ValueError, "max_ssrcs %d, at most %d", max_ssrcs, MAX_SSRCS);
        return -1;
    }
    if (PyDict_GET_SIZE(expected_seq) > max_ssrcs) {
        PyErr_Format(PyExc_ValueError, "%zd SSRCs tracked, at most %d",
                     PyDict_GET_SIZE(expected_seq), max_ssrcs);
        return -1;
    }
    self->count = 0;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(expected_seq, &position, &key, &value)) {
        unsigned long ssrc = PyLong_AsUnsignedLong(key);
        long expected = PyLong_AsLong(value);
        if (PyErr_Occurred()) {
            return -1;
        }
        if (ssrc > 0xFFFFFFFFUL || expected < 0 || expected > 0xFFFF) {
            PyErr_Format(PyExc_ValueError, "bad sequence entry %lu: %ld", ssrc, expected);
            return -1;
        }
        self->ssrcs[self->count] = (uint32_t)ssrc;
        self->expected[self->count] = (uint16_t)expected;
        self->dirty[self->count] = 0;
        self->count++;
    }
    Py_INCREF(expected_seq);
    Py_XSETREF(self->expected_seq, expected_seq);
    self->max_ssrcs = max_ssrcs;
    return 0;
}

static PyObject *table_count_method(SequenceTable *self, PyObject *const *args,
                                    Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "count(ssrc, seq) takes 2 arguments");
        return NULL;
    }
    unsigned long ssrc = PyLong_AsUnsignedLong(args[0]);
    long seq = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (self->expected_seq == NULL || ssrc > 0xFFFFFFFFUL || seq < 0 || seq > 0xFFFF) {
        PyErr_Format(PyExc_ValueError, "count(%lu, %ld) on %s table", ssrc, seq,
                     self->expected_seq == NULL ? "an uninitialised" : "a");
        return NULL;
    }
    long gap = table_count(self, (uint32_t)ssrc, (uint16_t)seq);
    return gap < 0 ? NULL : PyLong_FromLong(gap);
}

static PyObject *table_write_back_method(SequenceTable *self, PyObject *unused) {
    if (self->expected_seq != NULL && table_write_back(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int table_traverse(SequenceTable *self, visitproc visit, void *arg) {
    Py_VISIT(self->expected_seq);
    return 0;
}

static int table_clear(SequenceTable *self) {
    Py_CLEAR(self->expected_seq);
    self->count = 0;
    return 0;
}

static void table_dealloc(SequenceTable *self) {
    PyObject_GC_UnTrack(self);
    table_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef table_methods[] = {
    {"count", (PyCFunction)(void (*)(void))table_count_method, METH_FASTCALL,
     "count(ssrc, seq): the packets lost before this one (0 for a new SSRC), and remember it."},
    {"write_back", (PyCFunction)table_write_back_method, METH_NOARGS,
     "Bring the dict's expected sequence numbers up to date."},
    {NULL},
};

static PyTypeObject SequenceTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "webrtc._relaypath.SequenceTable",
    .tp_doc = "SequenceTable(expected_seq, max_ssrcs): a Forwarder's loss count while in C.",
    .tp_basicsize = sizeof(SequenceTable),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)table_init,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_traverse = (traverseproc)table_traverse,
    .tp_clear = (inquiry)table_clear,
    .tp_methods = table_methods,
};

/* -- relay pump ------------------------------------------------------------------------------ */

typedef int (*srtp_function)(void *context, void *packet, int *length);

typedef struct {
    srtp_function function;  /* NULL: no SRTP this way */
    void *context;
    Py_ssize_t room;         /* the largest packet the Python path accepts for this operation */
    PyObject *keepalive;     /* the pylibsrtp Session owning the context */
} SrtpOperation;

typedef struct RelayPump RelayPump;

typedef struct {
    RelayPump *pump;         /* the destination socket's pump: its fd, closed state, on_error */
    struct sockaddr_storage address;
    socklen_t address_length;
} Destination;

typedef struct {
    signed char destination;  /* index into destinations; -1: no route, Python decides */
    unsigned char payload_type;
} PayloadRoute;

struct RelayPump {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int fd;                   /* -1 once closed */
    PyObject *lag;            /* webrtc.datagram.LoopLag: its `behind` chooses the drain mode */
    PyObject *on_packet;      /* callable(packet) or NULL */
    PyObject *on_datagram;    /* callable(packet, address) */
    PyObject *on_error;       /* callable(OSError): the socket's protocol.error_received */
    PyObject *poller;         /* the RelayPoller whose epoll set has the fd, or NULL */
    PyObject *source_object;  /* the `source` address as given, or NULL: no filter */
    struct sockaddr_storage source;  /* parsed: only datagrams from here relay / on_packet */
    unsigned long long source_packets;  /* datagrams from `source`, never reset */
    int relaying;
    SrtpOperation srtp_in;
    SrtpOperation srtp_out;
    PayloadRoute routes[PAYLOAD_TYPES];
    Destination destinations[MAX_DESTINATIONS];
    int destination_count;
    SequenceTable *sequences; /* the Forwarder's, while its pumps relay */
    PyObject *stats;          /* the direction's DirectionStats, flushed into */
    unsigned long long pending_packets, pending_bytes, pending_lost;
    unsigned long long relayed;  /* every packet this pump relayed, never reset */
    unsigned char datagram[MAX_DATAGRAM];
    unsigned char work[MAX_DATAGRAM + MAX_SRTP_TRAILER];
};

static PyTypeObject RelayPumpType;
static PyObject *str_behind, *str_packets, *str_bytes, *str_lost;

/* -- configuration ------------------------------------------------------------------------ */

static void clear_srtp(SrtpOperation *operation) {
    operation->function = NULL;
    operation->context = NULL;
    operation->room = 0;
    Py_CLEAR(operation->keepalive);
}

/* (function address, context address, room, keepalive) as webrtc.srtp.SrtpTransform.native()
   gives it, or None. */
static int parse_srtp(PyObject *value, SrtpOperation *operation) {
    if (value == Py_None) {
        return 0;
    }
    unsigned long long function, context;
    Py_ssize_t room;
    PyObject *keepalive;
    if (!PyArg_ParseTuple(value, "KKnO;srtp must be (function, context, room, session)",
                          &function, &context, &room, &keepalive)) {
        return -1;
    }
    if (function == 0 || context == 0 || room < RTP_HEADER || room > MAX_DATAGRAM) {
        PyErr_Format(PyExc_ValueError, "unusable SRTP operation (room %zd)", room);
        return -1;
    }
    operation->function = (srtp_function)(uintptr_t)function;
    operation->context = (void *)(uintptr_t)context;
    operation->room = room;
    Py_INCREF(keepalive);
    operation->keepalive = keepalive;
    return 0;
}

/* An address tuple as the destination socket's family, resolved as CPython's socket module
   resolves numeric hosts (getaddrinfo with AI_NUMERICHOST): never a DNS lookup. */
static int parse_address(int fd, PyObject *address, Destination *destination) {
    struct sockaddr_storage own;
    socklen_t own_length = sizeof own;
    if (getsockname(fd, (struct sockaddr *)&own, &own_length) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyArg_ParseTuple(address, "si|II;address must be (host, port[, flowinfo, scope_id])",
                          &host, &port, &flowinfo, &scope_id)) {
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d out of range", port);
        return -1;
    }
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_family = own.ss_family;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST;
    int status = getaddrinfo(host, NULL, &hints, &found);
    if (status != 0 || found == NULL || found->ai_addrlen > sizeof destination->address) {
        if (found != NULL) {
            freeaddrinfo(found);
        }
        PyErr_Format(PyExc_ValueError, "%s is not a numeric address of the socket's family",
                     host);
        return -1;
    }
    memcpy(&destination->address, found->ai_addr, found->ai_addrlen);
    destination->address_length = found->ai_addrlen;
    freeaddrinfo(found);
    if (own.ss_family == AF_INET6) {
        struct sockaddr_in6 *ipv6 = (struct sockaddr_in6 *)&destination->address;
        ipv6->sin6_port = htons((uint16_t)port);
        ipv6->sin6_flowinfo = htonl(flowinfo);
        if (scope_id != 0) {
            ipv6->sin6_scope_id = scope_id;
        }
    } else {
        ((struct sockaddr_in *)&destination->address)->sin_port = htons((uint16_t)port);
    }
    return 0;
}

/* Adds the pending counts to the DirectionStats, attribute by attribute, and brings the
   Forwarder's sequence dict up to date. */
static int flush(RelayPump *self) {
    if (self->stats == NULL) {
        return 0;
    }
    if (table_write_back(self->sequences) < 0) {
        return -1;
    }
    PyObject *names[3] = {str_packets, str_bytes, str_lost};
    unsigned long long *pending[3] = {
        &self->pending_packets, &self->pending_bytes, &self->pending_lost};
    for (int i = 0; i < 3; i++) {
        if (*pending[i] == 0) {
            continue;
        }
        PyObject *current = PyObject_GetAttr(self->stats, names[i]);
        if (current == NULL) {
            return -1;
        }
        PyObject *delta = PyLong_FromUnsignedLongLong(*pending[i]);
        PyObject *total = delta == NULL ? NULL : PyNumber_Add(current, delta);
        Py_DECREF(current);
        Py_XDECREF(delta);
        if (total == NULL) {
            return -1;
        }
        int failed = PyObject_SetAttr(self->stats, names[i], total);
        Py_DECREF(total);
        if (failed) {
            return -1;
        }
        *pending[i] = 0;
    }
    return 0;
}

static void clear_relay(RelayPump *self) {
    self->relaying = 0;
    clear_srtp(&self->srtp_in);
    clear_srtp(&self->srtp_out);
    for (int i = 0; i < PAYLOAD_TYPES; i++) {
        self->routes[i].destination = -1;
    }
    for (int i = 0; i < self->destination_count; i++) {
        Py_CLEAR(self->destinations[i].pump);
    }
    self->destination_count = 0;
    Py_CLEAR(self->sequences);
    Py_CLEAR(self->stats);
    self->pending_packets = self->pending_bytes = self->pending_lost = 0;
}

/* Flush the counts, then stop relaying: a failed flush keeps the configuration (and counts). */
static int stop_relay(RelayPump *self) {
    if (flush(self) < 0) {
        return -1;
    }
    clear_relay(self);
    return 0;
}

static PyObject *pump_relay(RelayPump *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"routes", "destinations", "srtp_in", "srtp_out", "sequences",
                               "stats", NULL};
    PyObject *routes, *destinations, *srtp_in, *srtp_out, *sequences, *stats;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$O!O!OOO!O", keywords, &PyDict_Type,
                                     &routes, &PyList_Type, &destinations, &srtp_in, &srtp_out,
                                     &SequenceTableType, &sequences, &stats)) {
        return NULL;
    }
    if (((SequenceTable *)sequences)->expected_seq == NULL) {
        PyErr_SetString(PyExc_ValueError, "sequence table not initialised");
        return NULL;
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "relay pump is closed");
        return NULL;
    }
    if (srtp_in != Py_None && srtp_out != Py_None) {
        /* A failed protect after a successful unprotect could not go back to Python. */
        PyErr_SetString(PyExc_ValueError, "SRTP on both sides is not relayed in C");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(destinations);
    if (count > MAX_DESTINATIONS) {
        PyErr_Format(PyExc_ValueError, "%zd destinations, at most %d", count, MAX_DESTINATIONS);
        return NULL;
    }
    if (stop_relay(self) < 0) {
        return NULL;
    }
    if (parse_srtp(srtp_in, &self->srtp_in) < 0 || parse_srtp(srtp_out, &self->srtp_out) < 0) {
        goto failed;
    }
    if (self->srtp_out.function != NULL && self->srtp_out.room + MAX_SRTP_TRAILER > (Py_ssize_t)sizeof self->work) {
        PyErr_SetString(PyExc_ValueError, "SRTP room leaves no space for the trailer");
        goto failed;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pump, *address;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(destinations, i),
                              "O!O;destination must be (RelayPump, address)", &RelayPumpType,
                              &pump, &address)) {
            goto failed;
        }
        Destination *destination = &self->destinations[i];
        if (parse_address(((RelayPump *)pump)->fd, address, destination) < 0) {
            goto failed;
        }
        Py_INCREF(pump);
        destination->pump = (RelayPump *)pump;
        self->destination_count = (int)i + 1;
    }
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(routes, &position, &key, &value)) {
        long payload_type = PyLong_AsLong(key);
        int target, index;
        if (payload_type == -1 && PyErr_Occurred()) {
            goto failed;
        }
        if (!PyArg_ParseTuple(value, "ii;route must be (payload type, destination index)",
                              &target, &index)) {
            goto failed;
        }
        if (payload_type < 0 || payload_type >= PAYLOAD_TYPES || target < 0 ||
            target >= PAYLOAD_TYPES || index < 0 || index >= self->destination_count) {
            PyErr_Format(PyExc_ValueError, "bad route %ld -> (%d, %d)", payload_type, target,
                         index);
            goto failed;
        }
        self->routes[payload_type].destination = (signed char)index;
        self->routes[payload_type].payload_type = (unsigned char)target;
    }
    Py_INCREF(sequences);
    self->sequences = (SequenceTable *)sequences;
    Py_INCREF(stats);
    self->stats = stats;
    self->relaying = 1;
    Py_RETURN_NONE;
failed:
    clear_relay(self);
    return NULL;
}

static PyObject *pump_stop(RelayPump *self, PyObject *unused) {
    if (stop_relay(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *pump_flush(RelayPump *self, PyObject *unused) {
    if (flush(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The socket is closing: never read or send on its fd again. */
static int leave_poller(RelayPump *self);

static PyObject *pump_close(RelayPump *self, PyObject *unused) {
    int failed = flush(self);
    clear_relay(self);
    Py_INCREF(self);  /* leaving the poller drops the reference its epoll set held */
    if (leave_poller(self) < 0) {
        failed = -1;
    }
    self->fd = -1;
    Py_CLEAR(self->source_object);
    Py_CLEAR(self->lag);
    Py_CLEAR(self->on_packet);
    Py_CLEAR(self->on_datagram);
    Py_CLEAR(self->on_error);
    Py_DECREF(self);
    if (failed < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- per packet ----------------------------------------------------------------------------- */

static int report_error(PyObject *on_error) {
    PyObject *type, *value, *traceback;
    PyErr_SetFromErrno(PyExc_OSError);
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (on_error == NULL) {
        Py_XDECREF(value);
        return 0;
    }
    PyObject *result = PyObject_CallOneArg(on_error, value);
    Py_XDECREF(value);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* Forwarder's sequence gap count, on the shared table. */
static int count_loss(RelayPump *self, const unsigned char *packet) {
    uint16_t seq = (uint16_t)(packet[2] << 8 | packet[3]);
    uint32_t ssrc = (uint32_t)packet[8] << 24 | (uint32_t)packet[9] << 16 |
                    (uint32_t)packet[10] << 8 | packet[11];
    long gap = table_count(self->sequences, ssrc, seq);
    if (gap < 0) {
        return -1;
    }
    self->pending_lost += (unsigned long long)gap;
    return 0;
}

/* 1: relayed; 0: the Python path must take it, untouched; -1: exception set. */
static int relay(RelayPump *self, unsigned char *datagram, Py_ssize_t size) {
    if (size < RTP_HEADER || datagram[0] < 128 || datagram[0] > 191 ||
        (datagram[1] >= 192 && datagram[1] <= 223)) {
        return 0;  /* not RTP (RFC 7983, RFC 5761): STUN, DTLS, RTCP, junk */
    }
    PayloadRoute route = self->routes[datagram[1] & 0x7F];
    if (route.destination < 0) {
        return 0;
    }
    Destination *destination = &self->destinations[(int)route.destination];
    if (destination->pump->fd < 0) {
        return 0;
    }
    SrtpOperation *srtp_in = &self->srtp_in, *srtp_out = &self->srtp_out;
    if ((srtp_in->function != NULL && size > srtp_in->room) ||
        (srtp_out->function != NULL && size > srtp_out->room)) {
        return 0;  /* the Python path reports it */
    }
    /* With SRTP the packet is worked on in a copy, so that a libsrtp failure leaves the
       datagram as received for the Python path, which fails and counts it the same way. */
    unsigned char *packet = datagram;
    int length = (int)size;
    if (srtp_in->function != NULL || srtp_out->function != NULL) {
        memcpy(self->work, datagram, (size_t)size);
        packet = self->work;
    }
    if (srtp_in->function != NULL && srtp_in->function(srtp_in->context, packet, &length) != 0) {
        return 0;
    }
    if (count_loss(self, packet) < 0) {
        return -1;
    }
    packet[1] = (unsigned char)((packet[1] & 0x80) | route.payload_type);
    int plain_length = length;
    /* A protect failure goes to Python after the loss count: counting the same packet again
       there finds it expected already and adds nothing. */
    if (srtp_out->function != NULL &&
        srtp_out->function(srtp_out->context, packet, &length) != 0) {
        return 0;
    }
    ssize_t sent;
    do {
        sent = sendto(destination->pump->fd, packet, (size_t)length, 0,
                      (struct sockaddr *)&destination->address, destination->address_length);
    } while (sent < 0 && errno == EINTR);
    /* A full send buffer drops the packet, as webrtc.datagram.DatagramSocket.sendto does. */
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
        report_error(destination->pump->on_error) < 0) {
        return -1;
    }
    self->pending_packets++;
    self->pending_bytes += (unsigned long long)plain_length;
    self->relayed++;
    return 1;
}

/* The source address as CPython's socket module formats it (makesockaddr). */
static PyObject *source_address(const struct sockaddr_storage *source, socklen_t length) {
    if (length == 0) {
        Py_RETURN_NONE;
    }
    char host[NI_MAXHOST];
    int status = getnameinfo((const struct sockaddr *)source, length, host, sizeof host, NULL, 0,
                             NI_NUMERICHOST);
    if (status != 0) {
        PyErr_Format(PyExc_OSError, "getnameinfo: %s", gai_strerror(status));
        return NULL;
    }
    if (source->ss_family == AF_INET6) {
        const struct sockaddr_in6 *ipv6 = (const struct sockaddr_in6 *)source;
        return Py_BuildValue("siII", host, ntohs(ipv6->sin6_port), ntohl(ipv6->sin6_flowinfo),
                             ipv6->sin6_scope_id);
    }
    return Py_BuildValue("si", host, ntohs(((const struct sockaddr_in *)source)->sin_port));
}

/* Whether a datagram's source is the pump's `source` (address and port). */
static int from_source(const RelayPump *self, const struct sockaddr_storage *source,
                       socklen_t length) {
    const struct sockaddr_storage *expected = &self->source;
    if (source->ss_family != expected->ss_family) {
        return 0;
    }
    if (source->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)source;
        const struct sockaddr_in *b = (const struct sockaddr_in *)expected;
        return length >= (socklen_t)sizeof *a && a->sin_port == b->sin_port &&
               a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (source->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)source;
        const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)expected;
        return length >= (socklen_t)sizeof *a && a->sin6_port == b->sin6_port &&
               memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
    }
    return 0;
}

/* Reads and hands on one datagram: 1, or 0 when none was waiting, -1 with an exception set. */
static int read_one(RelayPump *self) {
    struct sockaddr_storage source;
    socklen_t source_length = sizeof source;
    PyObject *on_packet = self->on_packet;
    int filtered = self->source_object != NULL;
    ssize_t size;
    do {
        if (on_packet != NULL && !filtered) {
            size = recv(self->fd, self->datagram, MAX_DATAGRAM, 0);
        } else {
            size = recvfrom(self->fd, self->datagram, MAX_DATAGRAM, 0,
                            (struct sockaddr *)&source, &source_length);
        }
    } while (size < 0 && errno == EINTR);
    if (size < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return 0;
        }
        /* e.g. ICMP port unreachable reported on a later read */
        return report_error(self->on_error) < 0 ? -1 : 1;
    }
    if (filtered) {
        if (from_source(self, &source, source_length)) {
            self->source_packets++;
        } else {
            /* Not the latched peer: never relayed, and to the leg with its address. */
            on_packet = NULL;
            goto python_path;
        }
    }
    if (self->relaying) {
        int relayed = relay(self, self->datagram, size);
        if (relayed != 0) {
            return relayed;
        }
    }
python_path:;
    PyObject *packet = PyBytes_FromStringAndSize((const char *)self->datagram, size);
    if (packet == NULL) {
        return -1;
    }
    /* Referenced for the call: the handler may replace itself (e.g. a leg latching). */
    PyObject *handler = on_packet != NULL ? on_packet : self->on_datagram;
    PyObject *result;
    Py_INCREF(handler);
    if (on_packet != NULL) {
        result = PyObject_CallOneArg(handler, packet);
    } else {
        PyObject *address = source_address(&source, source_length);
        if (address == NULL) {
            Py_DECREF(handler);
            Py_DECREF(packet);
            return -1;
        }
        PyObject *arguments[2] = {packet, address};
        result = PyObject_Vectorcall(handler, arguments, 2, NULL);
        Py_DECREF(address);
    }
    Py_DECREF(handler);
    Py_DECREF(packet);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 1;
}

/* How many datagrams one readiness reads: one, or up to DRAIN_LIMIT while the event loop runs
   behind (see webrtc.datagram); -1 with an exception set. */
static int read_limit(PyObject *lag) {
    if (lag == NULL) {
        return 1;
    }
    PyObject *behind = PyObject_GetAttr(lag, str_behind);
    if (behind == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(behind);
    Py_DECREF(behind);
    return truth < 0 ? -1 : truth ? DRAIN_LIMIT : 1;
}

/* One readiness of the pump's socket; -1 with an exception set. */
static int serve(RelayPump *self, int limit) {
    if (self->fd < 0) {
        return 0;
    }
    Py_INCREF(self);  /* a callback may close the socket and drop the last other reference */
    int failed = 0;
    for (int i = 0; i < limit; i++) {
        int read = read_one(self);
        if (read < 0) {
            failed = -1;
            break;
        }
        if (read == 0 || self->fd < 0) {
            break;
        }
    }
    Py_DECREF(self);
    return failed;
}

static PyObject *pump_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames) {
    RelayPump *self = (RelayPump *)callable;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "RelayPump() takes no arguments");
        return NULL;
    }
    if (self->fd < 0) {
        Py_RETURN_NONE;
    }
    int limit = read_limit(self->lag);
    if (limit < 0 || serve(self, limit) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- type ----------------------------------------------------------------------------------- */

static int pump_init(RelayPump *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"fd", "lag", "on_datagram", "on_error", NULL};
    int fd;
    PyObject *lag, *on_datagram, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iOOO", keywords, &fd, &lag, &on_datagram,
                                     &on_error)) {
        return -1;
    }
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be an open socket's");
        return -1;
    }
    if (!PyCallable_Check(on_datagram) || !PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_TypeError, "on_datagram and on_error must be callable");
        return -1;
    }
    self->fd = fd;
    Py_INCREF(lag);
    Py_XSETREF(self->lag, lag);
    Py_INCREF(on_datagram);
    Py_XSETREF(self->on_datagram, on_datagram);
    Py_INCREF(on_error);
    Py_XSETREF(self->on_error, on_error);
    return 0;
}

static PyObject *pump_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    RelayPump *self = (RelayPump *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = pump_vectorcall;
    self->fd = -1;
    for (int i = 0; i < PAYLOAD_TYPES; i++) {
        self->routes[i].destination = -1;
    }
    return (PyObject *)self;
}

static int pump_traverse(RelayPump *self, visitproc visit, void *arg) {
    Py_VISIT(self->lag);
    Py_VISIT(self->poller);
    Py_VISIT(self->source_object);
    Py_VISIT(self->on_packet);
    Py_VISIT(self->on_datagram);
    Py_VISIT(self->on_error);
    Py_VISIT(self->srtp_in.keepalive);
    Py_VISIT(self->srtp_out.keepalive);
    for (int i = 0; i < self->destination_count; i++) {
        Py_VISIT(self->destinations[i].pump);
    }
    Py_VISIT(self->sequences);
    Py_VISIT(self->stats);
    return 0;
}

static int pump_clear(RelayPump *self) {
    clear_relay(self);
    Py_CLEAR(self->poller);
    Py_CLEAR(self->source_object);
    Py_CLEAR(self->lag);
    Py_CLEAR(self->on_packet);
    Py_CLEAR(self->on_datagram);
    Py_CLEAR(self->on_error);
    return 0;
}

static void pump_dealloc(RelayPump *self) {
    PyObject_GC_UnTrack(self);
    pump_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *pump_get_on_packet(RelayPump *self, void *closure) {
    if (self->on_packet == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->on_packet);
    return self->on_packet;
}

static int pump_set_on_packet(RelayPump *self, PyObject *value, void *closure) {
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "on_packet must be callable or None");
        return -1;
    }
    PyObject *handler = value == Py_None ? NULL : value;
    Py_XINCREF(handler);
    Py_XSETREF(self->on_packet, handler);
    return 0;
}

static PyObject *pump_get_source(RelayPump *self, void *closure) {
    if (self->source_object == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(self->source_object);
    return self->source_object;
}

/* An address of the socket's family, numeric (as relay()'s destinations), or None. */
static int pump_set_source(RelayPump *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None || self->fd < 0) {
        Py_CLEAR(self->source_object);
        return 0;
    }
    Destination parsed;
    if (parse_address(self->fd, value, &parsed) < 0) {
        return -1;
    }
    memcpy(&self->source, &parsed.address, sizeof self->source);
    Py_INCREF(value);
    Py_XSETREF(self->source_object, value);
    return 0;
}

static PyObject *pump_get_source_packets(RelayPump *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->source_packets);
}

static PyObject *pump_get_relaying(RelayPump *self, void *closure) {
    return PyBool_FromLong(self->relaying);
}

static PyObject *pump_get_closed(RelayPump *self, void *closure) {
    return PyBool_FromLong(self->fd < 0);
}

static PyObject *pump_get_relayed(RelayPump *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->relayed);
}

static PyGetSetDef pump_getset[] = {
    {"on_packet", (getter)pump_get_on_packet, (setter)pump_set_on_packet,
     "Takes the datagrams the pump does not relay, without their source, while set.", NULL},
    {"source", (getter)pump_get_source, (setter)pump_set_source,
     "While set, only datagrams from this (host, port) are relayed or go to on_packet; the "
     "others go to on_datagram with their address.", NULL},
    {"source_packets", (getter)pump_get_source_packets, NULL,
     "Datagrams from `source` read, ever.", NULL},
    {"relaying", (getter)pump_get_relaying, NULL, "Whether relay() configured a route.", NULL},
    {"closed", (getter)pump_get_closed, NULL, "Whether close() was called.", NULL},
    {"relayed", (getter)pump_get_relayed, NULL, "Packets relayed in C, ever.", NULL},
    {NULL},
};

static PyMethodDef pump_methods[] = {
    {"relay", (PyCFunction)(void (*)(void))pump_relay, METH_VARARGS | METH_KEYWORDS,
     "relay(*, routes, destinations, srtp_in, srtp_out, sequences, stats): "
     "relay RTP of the routed payload types in C (routes: payload type -> (payload type "
     "sent, index into destinations); destinations: [(RelayPump, address)])."},
    {"stop", (PyCFunction)pump_stop, METH_NOARGS, "Stop relaying: every datagram to Python."},
    {"flush", (PyCFunction)pump_flush, METH_NOARGS,
     "Add the pending counts to the stats, write the sequence table back."},
    {"close", (PyCFunction)pump_close, METH_NOARGS, "The socket closes: stop for good."},
    {NULL},
};

static PyTypeObject RelayPumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "webrtc._relaypath.RelayPump",
    .tp_doc = "RelayPump(fd, lag, on_datagram, on_error): a relay socket's reader.",
    .tp_basicsize = sizeof(RelayPump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(RelayPump, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = pump_new,
    .tp_init = (initproc)pump_init,
    .tp_dealloc = (destructor)pump_dealloc,
    .tp_traverse = (traverseproc)pump_traverse,
    .tp_clear = (inquiry)pump_clear,
    .tp_methods = pump_methods,
    .tp_getset = pump_getset,
};

/* -- poller --------------------------------------------------------------------------------- */

/* One epoll set holding the relay sockets, so that the event loop sees one file descriptor
   for all of them and one readiness of it serves every ready socket in one C call, where the
   loop would otherwise dispatch each socket's readiness as a handle of its own. Level
   triggered, like the loop: a socket with more datagrams waiting is reported again. At most
   POLL_BATCH sockets per call, so that the loop's other work (timers, signalling) still runs
   between batches while hundreds of sockets are ready. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int epoll_fd;   /* -1 once closed */
    PyObject *lag;  /* webrtc.datagram.LoopLag */
} RelayPoller;

static PyTypeObject RelayPollerType;

/* The pump's socket leaves its poller's epoll set (before the socket closes: an epoll set
   tracks the open file, not the number). */
static int leave_poller(RelayPump *self) {
    RelayPoller *poller = (RelayPoller *)self->poller;
    if (poller == NULL) {
        return 0;
    }
    int failed = 0;
    if (poller->epoll_fd >= 0 && self->fd >= 0 &&
        epoll_ctl(poller->epoll_fd, EPOLL_CTL_DEL, self->fd, NULL) < 0) {
        PyErr_Format(PyExc_OSError, "epoll_ctl(DEL, fd %d): %s", self->fd, strerror(errno));
        failed = -1;
    }
    Py_CLEAR(self->poller);
    Py_DECREF(self);  /* the reference the epoll set held */
    return failed;
}

static PyObject *poller_add(RelayPoller *self, PyObject *pump_object) {
    if (!PyObject_TypeCheck(pump_object, &RelayPumpType)) {
        PyErr_SetString(PyExc_TypeError, "add() takes a RelayPump");
        return NULL;
    }
    RelayPump *pump = (RelayPump *)pump_object;
    if (self->epoll_fd < 0 || pump->fd < 0 || pump->poller != NULL) {
        PyErr_Format(PyExc_ValueError, "cannot poll fd %d: %s", pump->fd,
                     self->epoll_fd < 0 ? "poller closed" : pump->fd < 0 ? "pump closed"
                                                                          : "already polled");
        return NULL;
    }
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = pump};
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, pump->fd, &event) < 0) {
        PyErr_Format(PyExc_OSError, "epoll_ctl(ADD, fd %d): %s", pump->fd, strerror(errno));
        return NULL;
    }
    Py_INCREF(pump);  /* held while in the epoll set, whose events point at it */
    Py_INCREF(self);
    pump->poller = (PyObject *)self;
    Py_RETURN_NONE;
}

static PyObject *poller_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames) {
    RelayPoller *self = (RelayPoller *)callable;
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "RelayPoller() takes no arguments");
        return NULL;
    }
    if (self->epoll_fd < 0) {
        Py_RETURN_NONE;
    }
    struct epoll_event events[POLL_BATCH];
    int ready = epoll_wait(self->epoll_fd, events, POLL_BATCH, 0);
    if (ready < 0) {
        if (errno == EINTR) {
            Py_RETURN_NONE;
        }
        return PyErr_Format(PyExc_OSError, "epoll_wait: %s", strerror(errno));
    }
    int limit = read_limit(self->lag);
    if (limit < 0) {
        return NULL;
    }
    /* Every ready pump referenced for the batch: a callback may close any of them. */
    for (int i = 0; i < ready; i++) {
        Py_INCREF((PyObject *)events[i].data.ptr);
    }
    int failed = 0;
    for (int i = 0; i < ready && !failed; i++) {
        failed = serve((RelayPump *)events[i].data.ptr, limit) < 0;
    }
    /* On an exception the rest wait for the next call: still ready, they are reported again. */
    for (int i = 0; i < ready; i++) {
        Py_DECREF((PyObject *)events[i].data.ptr);
    }
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *poller_fileno(RelayPoller *self, PyObject *unused) {
    return PyLong_FromLong(self->epoll_fd);
}

/* Every pump must have closed (left) first: their references are the epoll set's. */
static PyObject *poller_close(RelayPoller *self, PyObject *unused) {
    if (self->epoll_fd >= 0) {
        close(self->epoll_fd);
        self->epoll_fd = -1;
    }
    Py_RETURN_NONE;
}

static int poller_init(RelayPoller *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"lag", NULL};
    PyObject *lag;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", keywords, &lag)) {
        return -1;
    }
    if (self->epoll_fd < 0) {
        self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (self->epoll_fd < 0) {
            PyErr_Format(PyExc_OSError, "epoll_create1: %s", strerror(errno));
            return -1;
        }
    }
    Py_INCREF(lag);
    Py_XSETREF(self->lag, lag);
    return 0;
}

static PyObject *poller_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    RelayPoller *self = (RelayPoller *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = poller_vectorcall;
    self->epoll_fd = -1;
    return (PyObject *)self;
}

static int poller_traverse(RelayPoller *self, visitproc visit, void *arg) {
    Py_VISIT(self->lag);
    return 0;
}

static int poller_clear(RelayPoller *self) {
    Py_CLEAR(self->lag);
    return 0;
}

static void poller_dealloc(RelayPoller *self) {
    PyObject_GC_UnTrack(self);
    if (self->epoll_fd >= 0) {
        close(self->epoll_fd);
    }
    poller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef poller_methods[] = {
    {"add", (PyCFunction)poller_add, METH_O,
     "add(pump): serve the pump's socket from now on (until pump.close())."},
    {"fileno", (PyCFunction)poller_fileno, METH_NOARGS, "The epoll fd: the loop's reader."},
    {"close", (PyCFunction)poller_close, METH_NOARGS, "Close the epoll set (pumps closed)."},
    {NULL},
};

static PyTypeObject RelayPollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "webrtc._relaypath.RelayPoller",
    .tp_doc = "RelayPoller(lag): one epoll set of relay sockets, its fd the loop's reader.",
    .tp_basicsize = sizeof(RelayPoller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(RelayPoller, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = poller_new,
    .tp_init = (initproc)poller_init,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_traverse = (traverseproc)poller_traverse,
    .tp_clear = (inquiry)poller_clear,
    .tp_methods = poller_methods,
};

static struct PyModuleDef relaypath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "webrtc._relaypath",
    .m_doc = "The relay's per-packet fast path (see webrtc/_relaypath.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relaypath(void) {
    str_behind = PyUnicode_InternFromString("behind");
    str_packets = PyUnicode_InternFromString("packets");
    str_bytes = PyUnicode_InternFromString("bytes");
    str_lost = PyUnicode_InternFromString("lost");
    if (str_behind == NULL || str_packets == NULL || str_bytes == NULL || str_lost == NULL ||
        PyType_Ready(&RelayPumpType) < 0 || PyType_Ready(&SequenceTableType) < 0 ||
        PyType_Ready(&RelayPollerType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&relaypath_module);
    if (module == NULL) {
        return NULL;
    }
    PyModule_AddIntConstant(module, "MAX_DATAGRAM", MAX_DATAGRAM);
    PyModule_AddIntConstant(module, "MAX_SRTP_TRAILER", MAX_SRTP_TRAILER);
    PyModule_AddIntConstant(module, "MAX_DESTINATIONS", MAX_DESTINATIONS);
    PyModule_AddIntConstant(module, "MAX_SSRCS", MAX_SSRCS);
    if (PyModule_AddType(module, &RelayPumpType) < 0 ||
        PyModule_AddType(module, &SequenceTableType) < 0 ||
        PyModule_AddType(module, &RelayPollerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
