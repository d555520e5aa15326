import requests


def edit_image():
  url = 'https://api.gptimageapi.dev/v1/images/edit'
  headers = {
    'Authorization': 'Bearer YOUR_API_KEY',
    'Content-Type': 'application/json',
  }
  payload = {
    'prompt': '把这张产品图改成更高级的棚拍效果,弱化反光,背景换成浅灰无缝纸背景。',
    'image': 'https://example.com/image.jpg',
    'model': 'gpt-image-2',
    'size': '4:3',
    'quality': 'high',
    'n': 1,
  }

  res = requests.post(url, headers=headers, json=payload, timeout=60)
  res.raise_for_status()
  result = res.json()
  if result.get('code') != 0:
    raise Exception(result.get('message'))
  return result.get('data', {}).get('images', [])[0].get('url')


print(edit_image())
