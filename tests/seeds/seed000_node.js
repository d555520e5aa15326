async function editImage() {
  const res = await fetch('https://api.gptimageapi.dev/v1/images/edit', {
    method: 'POST',
    headers: {
      Authorization: 'Bearer YOUR_API_KEY',
      'Content-Type': 'application/json',
    },
    body: JSON.stringify({
      prompt:
        '把这张产品图改成更高级的棚拍效果,弱化反光,背景换成浅灰无缝纸背景。',
      image: 'https://example.com/image.jpg',
      model: 'gpt-image-2',
      size: '4:3',
      quality: 'high',
      n: 1,
    }),
  });

  const result = await res.json();
  if (result.code !== 0) throw new Error(result.message);
  return result.data.images[0].url;
}
