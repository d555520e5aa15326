// The console's words in English and Simplified Chinese; `t(key, values)` fills {name} slots.

const WORDS = {
  en: {
    "language": "Language",
    "nav.playground": "Playground", "nav.tasks": "Tasks", "nav.usage": "Usage", "nav.admin": "Admin", "nav.signout": "Sign out",
    "signin.title": "Sign in", "signin.key": "API key", "signin.submit": "Sign in",
    "signin.help": "Paste an API key. It stays in this tab only and is sent as a Bearer header.",
    "signin.wrong": "This key was refused: {message}",
    "play.title": "Playground", "play.images": "Images (up to 16; their order is 图1, 图2, …)",
    "play.drop": "Drop, paste or pick images here", "play.pick": "Pick images", "play.urls": "Image URLs (one per line)",
    "play.prompt": "Prompt", "play.model": "Model", "play.size": "Size", "play.custom": "Custom size (WxH)",
    "play.quality": "Quality", "play.n": "Images", "play.format": "Format", "play.background": "Background",
    "play.quote": "Price: {price} credits · available: {available}", "play.quote.short": "Not enough credits: {price} needed, {available} available",
    "play.send": "Run", "play.running": "Running… {seconds} s · partial images {partials}",
    "play.done": "Made by the {engine} engine in {seconds} s · cost {cost} credits",
    "play.download": "Download", "play.snippets": "The same request in code", "play.remove": "Remove",
    "play.earlier": "Move earlier", "play.later": "Move later", "play.nothing": "Write a prompt first.",
    "tasks.title": "Tasks", "tasks.state": "State", "tasks.model": "Model", "tasks.kind": "Kind", "tasks.images": "Images",
    "tasks.cost": "Cost", "tasks.created": "Created", "tasks.none": "No tasks yet.", "tasks.back": "All tasks",
    "task.title": "Task {id}", "task.error": "Error", "task.results": "Results", "task.request": "Request", "task.calls": "Engine calls",
    "usage.title": "Usage", "usage.balance": "Balance", "usage.held": "Held", "usage.available": "Available",
    "usage.chart": "Credits and images per day (recent tasks)", "usage.credits": "credits", "usage.imagesword": "images",
    "usage.ledger": "Ledger", "usage.kind": "Kind", "usage.amount": "Amount", "usage.heldcol": "Held", "usage.task": "Task", "usage.note": "Note",
    "admin.title": "Admin", "admin.keys": "Keys", "admin.create": "Create a key", "admin.name": "Name", "admin.credits": "Credits",
    "admin.isadmin": "Admin key", "admin.created": "New key (shown once): {key} · webhook secret: {secret}",
    "admin.grant": "Grant", "admin.amount": "Amount", "admin.revoke": "Revoke", "admin.channels": "Channels",
    "admin.usage": "Usage across keys (30 days)", "admin.revoked": "revoked",
    "admin.engine": "Engine", "admin.circuit": "Circuit", "admin.health": "Health", "admin.attempts": "Attempts",
    "admin.nochannels": "No channel is configured: the built-in engine serves every model.", "admin.day": "Day",
    "task.engine": "Engine", "task.inputs": "Inputs", "task.finished": "Finished", "task.took": "Took",
    "task.deliveries": "Callback deliveries", "task.attempts": "Attempts", "task.answer": "Last answer",
    "admin.deduct": "Deduct", "admin.limits": "Limits…", "admin.rpm": "Requests per minute (empty: the default)",
    "error.credits": "Not enough credits for this request: {message}",
  },
  zh: {
    "language": "语言",
    "nav.playground": "试用", "nav.tasks": "任务", "nav.usage": "用量", "nav.admin": "管理", "nav.signout": "退出",
    "signin.title": "登录", "signin.key": "API 密钥", "signin.submit": "登录",
    "signin.help": "粘贴 API 密钥。它只保存在此标签页中，并以 Bearer 头发送。",
    "signin.wrong": "此密钥被拒绝：{message}",
    "play.title": "试用", "play.images": "图片（最多 16 张，顺序即 图1、图2 …）",
    "play.drop": "拖入、粘贴或选择图片", "play.pick": "选择图片", "play.urls": "图片链接（每行一个）",
    "play.prompt": "提示词", "play.model": "模型", "play.size": "尺寸", "play.custom": "自定义尺寸（宽x高）",
    "play.quality": "质量", "play.n": "张数", "play.format": "格式", "play.background": "背景",
    "play.quote": "价格：{price} 积分 · 可用：{available}", "play.quote.short": "积分不足：需要 {price}，可用 {available}",
    "play.send": "运行", "play.running": "运行中… {seconds} 秒 · 预览 {partials} 张",
    "play.done": "由 {engine} 引擎生成，用时 {seconds} 秒 · 花费 {cost} 积分",
    "play.download": "下载", "play.snippets": "同一请求的代码", "play.remove": "移除",
    "play.earlier": "前移", "play.later": "后移", "play.nothing": "请先填写提示词。",
    "tasks.title": "任务", "tasks.state": "状态", "tasks.model": "模型", "tasks.kind": "类型", "tasks.images": "张数",
    "tasks.cost": "花费", "tasks.created": "创建时间", "tasks.none": "还没有任务。", "tasks.back": "全部任务",
    "task.title": "任务 {id}", "task.error": "错误", "task.results": "结果", "task.request": "请求", "task.calls": "引擎调用",
    "usage.title": "用量", "usage.balance": "余额", "usage.held": "冻结", "usage.available": "可用",
    "usage.chart": "每日积分与图片（最近任务）", "usage.credits": "积分", "usage.imagesword": "张图片",
    "usage.ledger": "账目", "usage.kind": "类型", "usage.amount": "金额", "usage.heldcol": "冻结", "usage.task": "任务", "usage.note": "备注",
    "admin.title": "管理", "admin.keys": "密钥", "admin.create": "创建密钥", "admin.name": "名称", "admin.credits": "积分",
    "admin.isadmin": "管理员密钥", "admin.created": "新密钥（只显示一次）：{key} · Webhook 密钥：{secret}",
    "admin.grant": "充值", "admin.amount": "数额", "admin.revoke": "吊销", "admin.channels": "渠道",
    "admin.usage": "全部密钥的用量（30 天）", "admin.revoked": "已吊销",
    "admin.engine": "引擎", "admin.circuit": "熔断", "admin.health": "健康", "admin.attempts": "调用",
    "admin.nochannels": "未配置渠道：内置引擎服务所有模型。", "admin.day": "日期",
    "task.engine": "引擎", "task.inputs": "输入", "task.finished": "完成时间", "task.took": "耗时",
    "task.deliveries": "回调投递", "task.attempts": "尝试次数", "task.answer": "最近响应",
    "admin.deduct": "扣除", "admin.limits": "限额…", "admin.rpm": "每分钟请求数（留空：默认）",
    "error.credits": "积分不足：{message}",
  },
};

let current = "en";

export function chooseLanguage(preferred) {
  const wanted = preferred || sessionStorage.getItem("imagegate.language") || navigator.language || "en";
  current = wanted.toLowerCase().startsWith("zh") ? "zh" : "en";
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  sessionStorage.setItem("imagegate.language", current);
  return current;
}

export function language() {
  return current;
}

export function t(key, values = {}) {
  const text = WORDS[current][key] ?? WORDS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

export function translateStatic(root = document) {
  for (const node of root.querySelectorAll("[data-t]")) {
    node.textContent = t(node.dataset.t);
  }
}
