<?php
// SabreDAV (Debian's php-sabre-dav, 1.8) as a CardDAV server for Tandem's tests, run
// with `php -S 127.0.0.1:<port> server.php` (every request comes through this script).
//
// Environment:
//   TANDEM_SABREDAV_DB        the SQLite file; created with its tables when missing
//   TANDEM_SABREDAV_USER      the one user (default "tandem")
//   TANDEM_SABREDAV_PASSWORD  its password
//
// Authentication is Sabre's default, HTTP Digest (MD5, qop=auth, realm "SabreDAV").
// The user's address books live under /addressbooks/<user>/<book>/; a book is made
// with an extended MKCOL. SabreDAV 1.8 has no sync-collection report.

// Old code on a new PHP: deprecations would be printed into the XML answers.
error_reporting(E_ALL & ~E_DEPRECATED & ~E_USER_DEPRECATED & ~E_STRICT);
ini_set('display_errors', '0');
ini_set('log_errors', '1');
date_default_timezone_set('UTC');

require_once '/usr/share/php/Sabre/autoload.php';

const REALM = 'SabreDAV';

$db = getenv('TANDEM_SABREDAV_DB');
$user = getenv('TANDEM_SABREDAV_USER') ?: 'tandem';
$password = getenv('TANDEM_SABREDAV_PASSWORD');
if (!$db || $password === false) {
    http_response_code(500);
    echo "TANDEM_SABREDAV_DB and TANDEM_SABREDAV_PASSWORD must be set\n";
    exit;
}

$fresh = !file_exists($db);
$pdo = new PDO('sqlite:' . $db);
$pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_EXCEPTION);
// Concurrent requests (php -S workers) wait for each other's writes instead of failing.
$pdo->exec('PRAGMA busy_timeout = 10000');
if ($fresh) {
    init_schema($pdo, $user, $password);
}

function init_schema(PDO $pdo, string $user, string $password): void
{
    // The tables of Sabre's examples/sql/sqlite.*.sql, for the backends used here.
    $pdo->exec('CREATE TABLE IF NOT EXISTS addressbooks (id integer primary key asc,
        principaluri text, displayname text, uri text, description text, ctag integer)');
    $pdo->exec('CREATE TABLE IF NOT EXISTS cards (id integer primary key asc,
        addressbookid integer, carddata blob, uri text, lastmodified integer)');
    $pdo->exec('CREATE TABLE IF NOT EXISTS principals (id INTEGER PRIMARY KEY ASC,
        uri TEXT, email TEXT, displayname TEXT, vcardurl TEXT, UNIQUE(uri))');
    $pdo->exec('CREATE TABLE IF NOT EXISTS groupmembers (id INTEGER PRIMARY KEY ASC,
        principal_id INTEGER, member_id INTEGER, UNIQUE(principal_id, member_id))');
    $pdo->exec('CREATE TABLE IF NOT EXISTS users (id integer primary key asc,
        username TEXT, digesta1 TEXT, UNIQUE(username))');
    $pdo->prepare('INSERT OR REPLACE INTO users (username, digesta1) VALUES (?, ?)')
        ->execute([$user, md5($user . ':' . REALM . ':' . $password)]);
    $pdo->prepare('INSERT OR REPLACE INTO principals (uri, email, displayname) VALUES (?, ?, ?)')
        ->execute(['principals/' . $user, $user . '@example.invalid', $user]);
}

$principals = new Sabre\DAVACL\PrincipalBackend\PDO($pdo);
$cards = new Sabre\CardDAV\Backend\PDO($pdo);
$server = new Sabre\DAV\Server([
    new Sabre\DAVACL\PrincipalCollection($principals),
    new Sabre\CardDAV\AddressBookRoot($principals, $cards),
]);
$server->setBaseUri('/');
$server->addPlugin(new Sabre\DAV\Auth\Plugin(new Sabre\DAV\Auth\Backend\PDO($pdo), REALM));
$server->addPlugin(new Sabre\CardDAV\Plugin());
$server->addPlugin(new Sabre\DAVACL\Plugin());
$server->exec();
