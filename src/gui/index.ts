/**
 * The GUI domain (runs inside sys-gui; imports nothing host-side): the web
 * app's server, its socket services, prompts and notifications.
 */
export { GuiServer, SERVICES, type GuiServerOptions, type GuiServiceName } from './server.js';
export { WebApp, HttpError, CSP, type Route, type ApiRequest } from './http.js';
export { Prompts, parseAsk, parseNotice, labelOfIcon, LABELS, type Ask, type Notice, type Label } from './prompts.js';
export { parseHeader, readHeader, HeaderError, type CallHeader } from './socket-service.js';
export { QrexecAdmin, AdminError, EventDecoder, parseReply, agentSocketFromEnv, type AdminTransport, type AdminEvent } from './admin.js';
export { QubeManager, parseVmList, parseGetAll, type QubeRow, type QubeAction, type QubeDetails } from './qubes.js';
