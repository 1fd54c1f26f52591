// Opens the API docs and the rendered admin page in headless Chromium and reports what it saw
// and every URL the pages requested. Run by tests/tests/api_docs.rs.
const { chromium } = require('playwright-core');

(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({
    executablePath: process.env.GANTRY_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic',
           '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const failed = [];
  page.on('requestfailed', (r) => failed.push(r.url()));

  await page.goto(`${base}/admin/api/docs`, { waitUntil: 'networkidle' });
  await page.waitForSelector('.opblock', { timeout: 30000 });
  const swaggerPaths = await page.$$eval('.opblock-summary-path', (els) =>
    els.map((e) => (e.getAttribute('data-path') || e.textContent).replace(/\u200b/g, '')));
  const swaggerMethods = await page.$$eval('.opblock-summary-method', (els) => els.map((e) => e.textContent));

  await page.goto(`${base}/admin/api`, { waitUntil: 'networkidle' });
  const pageTitle = await page.title();
  const pagePaths = await page.$$eval('code.path', (els) => els.map((e) => e.textContent));
  const curls = await page.$$eval('pre.curl', (els) => els.map((e) => e.textContent));

  console.log(JSON.stringify({ requests, failed, swaggerPaths, swaggerMethods, pageTitle, pagePaths, curls }));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
